import pytest
import torch

from tests.helpers import MINI, SHARED_WEIGHTS

torch.set_num_threads(2)

requires_shared = pytest.mark.skipif(
    not (MINI.is_dir() and SHARED_WEIGHTS.is_file()), reason="../shared data and weights are not available"
)


@pytest.fixture
def tiny_model():
    from lesionseg.model.model import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(encoder_weights="none"), unfreeze=0)

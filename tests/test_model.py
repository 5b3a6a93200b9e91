import urllib.error

import pytest
import torch
from torchvision.models import mobilenet_v2

from lesionseg.model import encoder as encoder_module
from lesionseg.model.encoder import EncoderWeightsError, _load_mobilenet_v2, build_encoder
from lesionseg.model.model import ModelConfig, build_model, count_parameters, parse_unfreeze_level
from lesionseg.training.losses import DiceBCELoss
from tests.conftest import requires_shared
from tests.helpers import SHARED_WEIGHTS

EXPECTED_TRAINABLE = {0: 4_771_585, 1: 6_452_929, 2: 6_939_969, 3: 6_979_665, "all": 6_995_457, 4: 6_995_457}


@pytest.mark.parametrize("level", list(EXPECTED_TRAINABLE))
def test_parameter_counts_per_level(tiny_model, level):
    tiny_model.set_unfreeze_level(level)
    counts = count_parameters(tiny_model)
    assert counts["total"] == 6_995_457
    assert counts["trainable"] == EXPECTED_TRAINABLE[level]
    assert counts["frozen"] == 6_995_457 - EXPECTED_TRAINABLE[level]


@pytest.mark.parametrize("bad", [5, -1, "none", "2.5", True, None, "last"])
def test_invalid_unfreeze_level_lists_valid_values(bad):
    with pytest.raises(ValueError, match="valid values: 0, 1, 2, 3, 4, all"):
        parse_unfreeze_level(bad)


def test_unfreeze_level_aliases():
    assert parse_unfreeze_level("all") == parse_unfreeze_level(4) == parse_unfreeze_level("4") == 4
    assert parse_unfreeze_level(" ALL ") == 4


def test_encoder_feature_contract():
    enc = build_encoder("none")
    feats = enc(torch.randn(2, 3, 64, 96))
    assert [f.shape[1] for f in feats] == [24, 32, 96, 1280]
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("shape", [(64, 64), (70, 45), (33, 97)])
def test_output_matches_input_size_even_off_multiples_of_32(tiny_model, shape):
    tiny_model.eval()
    out = tiny_model(torch.randn(1, 3, *shape))
    assert out.shape == (1, 1, *shape)


def test_decoder_dilation_keeps_parameter_count():
    model = build_model(ModelConfig(encoder_weights="none", decoder_dilation=2))
    assert count_parameters(model)["total"] == 6_995_457
    assert model.decoder.up16.block[0].dilation == (2, 2)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_frozen_batchnorm_stays_in_eval_and_stats_do_not_move(tiny_model):
    tiny_model.train()
    bns = [m for m in tiny_model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    before = [bn.running_mean.clone() for bn in bns]
    decoder_bn = tiny_model.decoder.up16.block[1]
    decoder_before = decoder_bn.running_mean.clone()
    optimizer = torch.optim.Adam([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(4, 3, 64, 64), (torch.rand(4, 1, 64, 64) > 0.5).float()
    loss = DiceBCELoss()(tiny_model(x), y)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    assert not torch.equal(decoder_before, decoder_bn.running_mean)  # the decoder does train
    assert all(p.grad is None for p in tiny_model.encoder.parameters())


def test_unfreezing_puts_unfrozen_stage_back_in_train_mode(tiny_model):
    tiny_model.set_unfreeze_level(1).train()
    assert tiny_model.encoder.stages[3].training
    assert not tiny_model.encoder.stages[2].training
    tiny_model.eval()
    assert not tiny_model.encoder.stages[3].training


def test_local_state_dict_weights(tmp_path):
    reference = mobilenet_v2(weights=None)
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    enc = build_encoder(str(path))
    assert torch.equal(enc.stages[0][0][0].weight, reference.features[0][0].weight)


def test_state_dict_with_wrong_keys_names_them(tmp_path):
    state = mobilenet_v2(weights=None).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["classifier.1.bias"]
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(
        EncoderWeightsError, match=r"missing keys \[classifier.1.bias\].*unexpected keys \[extra.weight\]"
    ):
        _load_mobilenet_v2(str(path))


def test_weights_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(EncoderWeightsError, match="garbage.pth: not a loadable state dict: not a file written by") as e:
        _load_mobilenet_v2(str(path))
    assert "weights_only" not in str(e.value)  # what is wrong with the file, not torch's advice to load it unsafely
    with pytest.raises(EncoderWeightsError, match="no such file"):
        _load_mobilenet_v2(str(tmp_path / "missing.pth"))


def test_failed_imagenet_download_explains_local_file(monkeypatch):
    def offline(weights=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(encoder_module, "mobilenet_v2", offline)
    with pytest.raises(EncoderWeightsError, match="local\\s+mobilenet_v2 state dict.*encoder_weights="):
        _load_mobilenet_v2("imagenet")


@requires_shared
def test_shared_imagenet_weights_load():
    enc = build_encoder(str(SHARED_WEIGHTS))
    reference = mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(SHARED_WEIGHTS, weights_only=True))
    assert torch.equal(enc.stages[3][-1][0].weight, reference.features[18][0].weight)


def test_summary_cli_prints_exact_counts(capsys):
    import json

    from lesionseg.cli import main

    assert main(["summary", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        str(level): {
            "total": 6_995_457,
            "trainable": EXPECTED_TRAINABLE[level],
            "frozen": 6_995_457 - EXPECTED_TRAINABLE[level],
        }
        for level in (0, 1, 2, 3, "all")
    }

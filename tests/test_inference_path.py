"""One inference path (docs/development.md): the settings travel as one InferenceSettings, and only the model
layer's predict() turns logits into masks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lesionseg.inference.predict import Prediction, predict
from lesionseg.inference.settings import _RECORD_KEYS, OVERRIDABLE, InferenceSettings, PostprocessConfig, ZoomConfig

REPO = Path(__file__).resolve().parents[1]
CODE = sorted([*(REPO / "lesionseg").rglob("*.py"), *(REPO / "stages").rglob("*.py")])

# The inference settings' own names: no function takes one of them loose, every path takes InferenceSettings.
LOOSE = {"tta", "postprocess", "zoom", "keep_largest", "fill_holes", "zoom_margin", "zoom_max_share"}
# A `threshold` that is not the mask's: quality measured against a cut, and the review flag's quality threshold.
OTHER_THRESHOLDS = {
    ("lesionseg/inference/quality.py", "mask_quality"),  # the share of pixels near the cut it is given
    ("lesionseg/inference/quality.py", "needs_review"),  # a quality threshold
    ("lesionseg/inference/onnx_reference.py", "mask_quality"),  # the numpy mirror of mask_quality
    ("lesionseg/evaluation/review.py", "review_metrics"),  # a quality threshold
    ("lesionseg/evaluation/evaluate.py", "add_review"),  # a quality threshold
    ("lesionseg/evaluation/crossval_results.py", "_review"),  # a quality threshold
}
# The steps inside predict(): called from the inference layer only, and from these places that need no mask.
STEPS = {"zoom_pass", "compose_logits", "composed_at_input_size", "clean_mask", "clean_masks", "mask_from_logits"}
STEP_USERS = {
    "lesionseg/evaluation/calibrate.py": {"mask_from_logits"},  # one forward pass, the mask at every threshold
}


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]


def test_no_function_takes_an_inference_setting_loose():
    loose = []
    for path in CODE:
        rel = path.relative_to(REPO).as_posix()
        for node, names in functions(path):
            bad = set(names) & LOOSE
            if "threshold" in names and (rel, node.name) not in OTHER_THRESHOLDS:
                bad.add("threshold")
            loose += [f"{rel}:{node.lineno} {node.name}({', '.join(sorted(bad))})"] if bad else []
    assert not loose, f"take an InferenceSettings instead: {loose}"


def test_only_the_inference_layer_runs_the_steps_of_predict():
    outside = []
    for path in CODE:
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("lesionseg/inference/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lesionseg.model"):
                used = {alias.name for alias in node.names} & STEPS
                outside += [f"{rel}: {name}" for name in sorted(used - STEP_USERS.get(rel, set()))]
    assert not outside, f"call lesionseg.inference.predict.predict instead: {outside}"


def test_the_stored_form_round_trips_and_an_incomplete_one_is_refused():
    settings = InferenceSettings(
        tta=True,
        threshold=0.6,
        postprocess=PostprocessConfig(keep_largest=True),
        zoom=ZoomConfig(enabled=True, margin=0.2, max_share=0.5),
        review_threshold=0.4,
    )
    record = settings.record()
    assert tuple(record) == _RECORD_KEYS and InferenceSettings.from_record(record) == settings
    with pytest.raises(ValueError, match="missing inference settings: zoom, zoom_margin"):
        InferenceSettings.from_record({k: v for k, v in record.items() if not k.startswith("zoom")})
    with pytest.raises(ValueError, match="unknown inference settings: colour"):
        InferenceSettings.from_record({**record, "colour": 1})


def test_overrides_change_only_what_is_given():
    settings = InferenceSettings(tta=True, zoom=ZoomConfig(enabled=True, margin=0.1))
    assert settings.override({}) is settings and settings.override({"tta": None}) is settings
    changed = settings.override({"zoom": False, "fill_holes": True, "threshold": 0.7})
    assert changed == InferenceSettings(
        tta=True, threshold=0.7, postprocess=PostprocessConfig(fill_holes=True), zoom=ZoomConfig(margin=0.1)
    )
    assert set(OVERRIDABLE) <= set(_RECORD_KEYS)
    with pytest.raises(ValueError, match="cannot override zoom_margin"):
        settings.override({"zoom_margin": 0.5})
    with pytest.raises(ValueError, match="threshold must be a probability"):
        settings.override({"threshold": 1.5})


class Brightness(torch.nn.Module):
    """Logits: lesion where the first channel is dark, sharper for a darker pixel."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return -3.0 * x[:, :1] + self.anchor


def test_predict_gives_masks_at_any_size_with_quality_and_review():
    images = torch.full((3, 32, 32, 3), 230, dtype=torch.uint8)
    images[0, 8:20, 8:20] = 10  # a dark square
    images[1, 2:6, 2:6] = 10  # a dark speck and a larger square: the clean-up keeps the square
    images[1, 14:30, 14:30] = 10
    cleanup = PostprocessConfig(keep_largest=True, fill_holes=True)
    prediction = predict(Brightness(), images, InferenceSettings(postprocess=cleanup, review_threshold=0.5))
    assert isinstance(prediction, Prediction) and len(prediction) == 3
    assert prediction.mask(0, 64, 64)[16:40, 16:40].all() and prediction.mask(0, 64, 64).sum() == 24 * 24
    assert prediction.mask(1, 32, 32)[2:6, 2:6].sum() == 0 and prediction.mask(1, 32, 32)[14:30, 14:30].all()
    assert torch.equal(prediction.input_masks()[1, 0], prediction.mask(1, 32, 32))
    # image 2 shows no lesion: an empty mask, quality 0, flagged; the clear squares are not
    assert prediction.mask(2, 40, 50).shape == (40, 50) and not prediction.mask(2, 40, 50).any()
    assert prediction.quality[2] == 0 and prediction.review.tolist() == [False, False, True]
    assert prediction.zoomed == [False, False, False] and prediction.second_pass is None
    # a threshold above every probability: nothing is lesion
    none = predict(Brightness(), images, InferenceSettings(threshold=0.999))
    assert not none.input_masks().any()


def test_the_stages_build_the_settings_from_the_evaluate_params():
    import yaml

    from stages.params import ParamError
    from stages.settings import inference_settings

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    evaluate = params["evaluate"]
    settings = inference_settings(params, review_threshold=0.3)
    assert settings == InferenceSettings(
        tta=evaluate["tta"],
        postprocess=PostprocessConfig(evaluate["keep_largest"], evaluate["fill_holes"]),
        zoom=ZoomConfig(**evaluate["zoom"]),
        review_threshold=0.3,
    )
    with pytest.raises(ParamError, match="evaluate.tta"):
        inference_settings({**params, "evaluate": {**evaluate, "tta": "yes"}})
    with pytest.raises(ParamError, match=r"evaluate\.zoom\..*max_share"):
        inference_settings({**params, "evaluate": {**evaluate, "zoom": {**evaluate["zoom"], "max_share": 0}}})

"""scripts/compare_outputs.py: what a refactor must not change is reported; what differs by construction is not."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from tests.helpers import load_script

compare_outputs = load_script("compare_outputs")


def outputs(root, *, score=0.5, pixel=0, run_id="a", folder="/tmp/tmp.AAAA", tensor=0.0):
    (root / "predict").mkdir(parents=True)
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 0] = pixel
    Image.fromarray(mask).save(root / "predict" / "x_mask.png")
    (root / "metrics.json").write_text(json.dumps({"frozen": {"orig_jaccard": score, "mlflow_run_id": run_id}}))
    (root / "scores.csv").write_text(f"id,orig_jaccard,file\nx,{score},{folder}/x.jpg\n")
    (root / "card.md").write_text(f"# card\n- git_commit: `{run_id}`\nIoU {score:.4f}\n")
    np.savez(root / "pyfunc.npz", mask=mask, probabilities=np.full(3, score, np.float32))
    torch.save({"inference": {"threshold": score}, "w": torch.tensor([tensor])}, root / "m.pt")


def test_the_same_outputs_of_two_runs_compare_equal(tmp_path, capsys):
    outputs(tmp_path / "a")
    outputs(tmp_path / "b", score=0.5 + 1e-9, run_id="b", folder="/tmp/tmp.BBBB")  # rounding, ids, temp folders
    assert compare_outputs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "6 files compared: 0 difference(s)" in capsys.readouterr().out


def test_every_kind_of_change_is_named(tmp_path, capsys):
    outputs(tmp_path / "a")
    outputs(tmp_path / "b", score=0.51, pixel=255, tensor=1.0)
    (tmp_path / "b" / "extra.csv").write_text("id\n")
    assert compare_outputs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    printed = capsys.readouterr().out
    for expected in (
        "predict/x_mask.png: pixels differ",
        "metrics.json.frozen.orig_jaccard: 0.5 != 0.51",
        "scores.csv: column orig_jaccard differs",
        "card.md: text differs",
        "pyfunc.npz:probabilities: values differ",
        "m.pt.w: tensors differ",
        "extra.csv: only in",
    ):
        assert expected in printed, expected

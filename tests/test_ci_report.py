"""`scripts/ci_report.py` and the synthetic CI archives, on small synthetic tables."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lesionseg.data.download import _ARCHIVES, DownloadConfig, download_and_extract
from lesionseg.data.isic import TEST_IMAGES, TEST_MASKS, TRAIN_IMAGES, TRAIN_MASKS, pair_images_and_masks
from lesionseg.data.synthetic import write_archives
from lesionseg.errors import DataError
from lesionseg.evaluation.stats import PairedComparison
from lesionseg.experiments.compare import ModelComparison
from lesionseg.experiments.model_metrics import ModelMetrics
from lesionseg.experiments.runs import read_pipeline_run
from lesionseg.report.ci_report import _REPORT_MARKER, _change_chart, _metrics_diff
from tests.helpers import load_script

main = load_script("ci_report").main

IDS = [f"ISIC_{i:07d}" for i in range(40)]


def per_image(scores) -> pd.DataFrame:
    """A per-image table with the evaluate stage's columns (the report reads orig_jaccard)."""
    scores = np.asarray(scores)
    return pd.DataFrame(
        {
            "id": IDS[: len(scores)],
            "height": 240,
            "width": 320,
            "jaccard": scores,
            "dice": 2 * scores / (1 + scores),
            "orig_jaccard": scores,
            "orig_dice": 2 * scores / (1 + scores),
        }
    )


def write_run(folder, tables: dict[str, np.ndarray], extra_metrics=None):
    """A reports folder as the pipeline writes it: metrics.json and per_image/<model>.csv."""
    (folder / "per_image").mkdir(parents=True)
    metrics = {}
    for name, scores in tables.items():
        per_image(scores).to_csv(folder / "per_image" / f"{name}.csv", index=False, float_format="%.6f")
        metrics[name] = {"loss": 0.3, "orig_jaccard": float(np.mean(scores)), "lr": 0.001, "params_total": 6995457}
        metrics[name].update((extra_metrics or {}).get(name, {}))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    frozen = rng.uniform(0.5, 0.9, 40)
    tuned = rng.uniform(0.6, 0.95, 40)
    base = write_run(tmp_path / "base", {"frozen": frozen, "finetune_all": tuned})
    head = write_run(
        tmp_path / "head",
        {
            "frozen": frozen + rng.normal(0, 0.03, 40),  # noise only
            "finetune_all": tuned - 0.05 + rng.normal(0, 0.01, 40),  # clearly worse
            "cv_ensemble": tuned,
        },
        {"cv_ensemble": {"members": 2, "member_model": "finetune_all"}},
    )
    return base, head


def test_ci_report_markdown_chart_and_metrics_diff(two_runs, tmp_path, capsys):
    base, head = two_runs
    out, summary = tmp_path / "report", tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    args = [str(base), str(head), "--out", str(out), "--append-to", str(summary)]
    assert main([*args, "--base-label", "main", "--note", "Data: synthetic."]) == 0
    markdown = (out / "report.md").read_text()
    assert capsys.readouterr().out == markdown and summary.read_text() == "earlier step\n" + markdown
    assert markdown.startswith(_REPORT_MARKER + "\n") and "Base: `main`, head: `" + str(head) + "`" in markdown
    assert "Data: synthetic." in markdown
    assert (out / "change.png").read_bytes()[:4] == b"\x89PNG"
    table = markdown.split("### Change per model\n\n")[1].split("\n\n")[0].splitlines()
    assert table[0] == "| model | n | mean base | mean head | change | 95% CI | p | verdict |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| frozen", "| finetune_all"]
    assert table[3].endswith("| worse |") and table[2].endswith("| no detectable change |")
    assert "cv_ensemble: only in the head run, not compared." in markdown
    chart = markdown.split("```text\n")[1].split("```")[0].splitlines()
    assert chart[1].startswith("frozen ") and chart[2].startswith("finetune_all")
    tuned_row = chart[2][len("finetune_all  ") :]
    assert tuned_row.index("]") < tuned_row.index("|")  # the whole interval left of no change: worse
    assert "<summary>cv_ensemble: 0 of 5 metrics changed</summary>" in markdown  # members, not member_model
    assert "<summary>finetune_all: 1 of 4 metrics changed</summary>" in markdown
    assert "| params_total | 6995457 | 6995457 | +0 |" in markdown
    assert "| orig_jaccard | - | 0.7" in markdown  # added on the head side only


def test_metrics_diff_and_chart_values():
    diff = _metrics_diff(
        {"frozen": ModelMetrics({"loss": 0.5, "orig_jaccard": 0.7}, member_model="x")},
        {
            "frozen": ModelMetrics(
                {"loss": 0.5, "orig_jaccard": 0.75}, external={"clinic": {"n": 9, "orig_jaccard": 0.6}}, best_epoch=3
            ),
            "cv_ensemble": ModelMetrics({}, members=2),
        },
    )
    assert diff["frozen"] == [
        ("loss", 0.5, 0.5, 0.0),
        ("orig_jaccard", 0.7, 0.75, pytest.approx(0.05)),
        ("external.clinic.n", None, 9.0, None),  # external sets' numbers, named as dvc metrics names them
        ("external.clinic.orig_jaccard", None, 0.6, None),
        ("best_epoch", None, 3.0, None),
    ]
    assert diff["cv_ensemble"] == [("members", None, 2.0, None)]
    change = PairedComparison(n=10, mean_a=0.5, mean_b=0.6, delta=0.1, ci95=(0.05, 0.2), p_value=0.01)
    chart = _change_chart([ModelComparison("test", "m", change)], width=21).splitlines()
    # The axis spans 0.2 each way on 10 characters: the interval starts 2 right of 0, o at 5, ] at 10.
    assert chart[1] == "m  " + " " * 10 + "| [--o----]"


def test_ci_report_bad_input_names_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main([str(run), str(run)]) == 1
    message = f"scripts/ci_report.py: {run}: no metrics.json here: not a pipeline run's reports folder"
    assert capsys.readouterr().err.strip() == message
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match=r"metrics.json: not valid JSON"):
        read_pipeline_run(str(run))
    (run / "metrics.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"metrics.json: not a metrics file"):
        read_pipeline_run(str(run))


def test_synthetic_archives_are_deterministic_and_read_like_the_official_ones(tmp_path):
    a = write_archives(tmp_path / "a", 3, 2, 64, 48)
    b = write_archives(tmp_path / "b", 3, 2, 64, 48)
    for name in _ARCHIVES:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    download_and_extract(DownloadConfig(source=str(a), progress=False), tmp_path / "raw", tmp_path / "dl")
    test = pair_images_and_masks(tmp_path / "raw" / TEST_IMAGES, tmp_path / "raw" / TEST_MASKS)
    assert [isic_id for isic_id, *_ in test.pairs] == ["ISIC_0100000", "ISIC_0100001"] and not test.ignored
    train = pair_images_and_masks(tmp_path / "raw" / TRAIN_IMAGES, tmp_path / "raw" / TRAIN_MASKS)
    _, image, mask = train.pairs[0]
    image, mask = np.asarray(Image.open(image)), np.asarray(Image.open(mask))
    assert image.shape == (48, 64, 3) and set(np.unique(mask)) == {0, 255}
    assert image[mask > 0].mean() < image[mask == 0].mean() - 30  # a darker lesion: there is something to learn
    with pytest.raises(ValueError, match="at least 1 pair"):
        write_archives(tmp_path / "c", 0, 2)

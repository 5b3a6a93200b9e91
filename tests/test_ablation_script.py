"""The ablation script's row bookkeeping (the runs themselves are `dvc exp run`)."""

import importlib.util

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("ablation", REPO / "scripts" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def test_rows_accumulate_changes_and_side_rows_do_not_carry():
    rows = ablation.cumulative_rows()
    assert rows["reference"][1] == ablation.REFERENCE
    assert rows["hsv"][1]["augment.scale_rotate"] == 0.5  # from the row above
    assert rows["dilation2"][1]["model.decoder_dilation"] == 2
    assert rows["tta"][1]["model.decoder_dilation"] == 1  # the side row is not carried on
    assert rows["reference-eval"][1]["evaluate.tta"] is True and rows["affine"][1]["evaluate.tta"] is False
    assert rows["size256"][1]["data.size"] == 256 and rows["size256"][1]["evaluate.fill_holes"] is True


def test_reference_keys_exist_in_params_and_defaults_are_the_chosen_row():
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def get(key):
        section, leaf = key.split(".")
        return params[section][leaf]

    assert all(key.split(".")[1] in params[key.split(".")[0]] for key in ablation.REFERENCE)
    assert {key: get(key) for key in ablation.REFERENCE} == ablation.cumulative_rows()[ablation.CHOSEN][1]


def test_overrides_use_dvc_syntax_and_params_writer_sets_dotted_keys(tmp_path):
    assert ablation.override("evaluate.tta", True) == "evaluate.tta=true"
    assert ablation.override("data.expected_train", None) == "data.expected_train=null"
    assert ablation.override("finetune.unfreeze", [1, 2, "all"]) == "finetune.unfreeze=[1,2,all]"
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 25\n  lr: 0.001\n")
    ablation.write_params(path, {"train.epochs": 50, "evaluate.tta": True})
    assert yaml.safe_load(path.read_text()) == {"train": {"epochs": 50, "lr": 0.001}, "evaluate": {"tta": True}}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cv_ablation_rows_change_one_thing_against_the_reference():
    cv_ablation = _load("cv_ablation")
    frozen, finetune = cv_ablation.phase_configs("reference", "cpu")
    assert (frozen.epochs, frozen.lr, finetune.lr, frozen.augment.scale_rotate) == (25, 1e-3, 1e-4, 0.0)
    frozen, finetune = cv_ablation.phase_configs("augment", "cpu", epochs=1)
    assert frozen.epochs == finetune.epochs == 1 and finetune.augment.hue_saturation == 0.3
    _, finetune = cv_ablation.phase_configs("adamw_cosine", "cpu", epochs=1)
    assert finetune.warmup_epochs == 1 and finetune.scheduler == "cosine"


def test_cv_table_pairs_rows_on_the_same_images(tmp_path):
    cv_table = _load("cv_table")
    ids = [f"ISIC_{i:07d}" for i in range(40)]
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, 40)
    (tmp_path / "oof").mkdir()
    (tmp_path / "test").mkdir()
    for row, variant, shift in (
        ("reference", "plain", 0),
        ("reference", "tta_clean", 0.01),
        ("augment", "plain", 0.02),
    ):
        table = pd.DataFrame({"id": ids, "fold": np.arange(40) % 4, "orig_jaccard": base + shift, "orig_dice": base})
        table.to_csv(tmp_path / "oof" / f"{row}__finetune_all__{variant}.csv", index=False)
    pd.DataFrame({"id": ids[:10], "orig_jaccard": base[:10]}).to_csv(
        tmp_path / "test" / "reference__single__plain.csv", index=False
    )
    rows = {(r["row"], r["variant"]): r for r in cv_table.cv_rows(tmp_path)}
    assert rows[("augment", "plain")]["vs_reference"]["delta"] == pytest.approx(0.02)
    assert rows[("reference", "tta_clean")]["vs_reference"]["delta"] == 0  # against itself, same evaluation
    assert rows[("reference", "tta_clean")]["vs_reference_plain"]["delta"] == pytest.approx(0.01)
    text = cv_table.markdown(cv_table.cv_rows(tmp_path), cv_table.test_rows(tmp_path), [])
    assert "| augment | plain | " in text and "+0.0200 [+0.0200, +0.0200]" in text


def test_external_table_pairs_each_row_with_the_reference_on_test_external_and_cv(tmp_path):
    external_table = _load("external_table")
    rng = np.random.default_rng(1)
    screen, cv = tmp_path / "screen", tmp_path / "cv"
    (screen / "rows.json").parent.mkdir()
    (screen / "rows.json").write_text('{"reference": {"what": "ref"}, "camera_geo": {"what": "cam"}}')
    for where, n, shift in (("test", 30, 0.01), ("external", 50, 0.03)):
        base = rng.uniform(0.5, 0.9, n)
        ids = [f"ISIC_{i:07d}" for i in range(n)]
        for row, delta in (("reference", 0.0), ("camera_geo", shift)):
            (screen / where).mkdir(exist_ok=True)
            pd.DataFrame({"id": ids, "orig_jaccard": base + delta}).to_csv(
                screen / where / f"{row}__single__tta_clean.csv", index=False
            )
    base = rng.uniform(0.6, 0.9, 40)
    (cv / "oof").mkdir(parents=True)
    for row, delta in (("reference", 0.0), ("camera_geo", -0.005)):
        table = pd.DataFrame(
            {"id": [f"ISIC_{i:07d}" for i in range(40)], "fold": np.arange(40) % 5, "orig_jaccard": base + delta}
        )
        table["orig_dice"] = table["orig_jaccard"]
        table.sample(frac=1, random_state=0).to_csv(cv / "oof" / f"{row}__finetune_all__tta_clean.csv", index=False)
    (cv / "external").mkdir()
    ext_ids = [f"ISIC_{i:07d}" for i in range(20)]
    ext_base = rng.uniform(0.5, 0.9, 20)
    for row, delta in (("reference", 0.0), ("camera_geo", 0.02)):
        for k, noise in enumerate((-0.01, 0.01)):  # two fold models whose mean is base + delta
            pd.DataFrame({"id": ext_ids[::-1], "orig_jaccard": (ext_base + delta + noise)[::-1]}).to_csv(
                cv / "external" / f"{row}__fold{k}__tta_clean.csv", index=False
            )
    results = {r["row"]: r for r in external_table.summarize(screen, cv)}
    assert results["camera_geo"]["fold_models"] == 2
    assert results["reference"]["external_fold_models"] == pytest.approx(ext_base.mean())
    assert results["camera_geo"]["change_external_fold_models"]["delta"] == pytest.approx(0.02)
    assert results["camera_geo"]["change_external"]["delta"] == pytest.approx(0.03)
    assert results["camera_geo"]["change_test"]["delta"] == pytest.approx(0.01)
    assert results["camera_geo"]["change_cv"]["delta"] == pytest.approx(-0.005)
    assert results["reference"]["cv"]["mean"] == pytest.approx(base.mean(), abs=0.01)
    assert "change_cv" not in results["reference"]
    text = external_table.markdown(list(results.values()))
    assert "-0.0050 [-0.0050, -0.0050]" in text and "40] out-of-fold training pairs" in text
    assert "+0.0200 [+0.0200, +0.0200]" in text and "mean of [2] models" in text
    assert "out-of-fold" not in external_table.markdown(external_table.summarize(screen))  # without --cv


def test_fold_models_are_scored_on_the_external_folder_once(tmp_path, capsys):
    import torch

    from lesionseg.model.checkpoint import make_checkpoint, save_checkpoint
    from lesionseg.model.model import ModelConfig, build_model
    from tests.helpers import write_pair

    cv_ablation = _load("cv_ablation")
    for k in range(3):
        write_pair(tmp_path / "ext" / "images", tmp_path / "ext" / "masks", f"ISIC_{k:07d}", seed=k)
    config = ModelConfig(encoder_weights="none")
    for k in (0, 2):  # fold 1 not trained
        path = tmp_path / "work" / "models" / "reference" / f"fold{k}" / "finetune_all.pt"
        path.parent.mkdir(parents=True)
        save_checkpoint(make_checkpoint(build_model(config, 0), config, 64, 1, {}), path)
    args = ("reference", 3, tmp_path / "work", tmp_path / "out", torch.device("cpu"), str(tmp_path / "ext"))
    cv_ablation.score_folds_external(*args)
    tables = sorted(p.name for p in (tmp_path / "out" / "external").iterdir())
    assert tables == [f"reference__fold{k}__{v}.csv" for k in (0, 2) for v in ("plain", "tta_clean")]
    assert len(pd.read_csv(tmp_path / "out" / "external" / tables[0])) == 3
    assert "fold 1 not trained" in capsys.readouterr().out
    cv_ablation.score_folds_external(*args)  # again: nothing left to score
    assert "scored on the external folder" not in capsys.readouterr().out

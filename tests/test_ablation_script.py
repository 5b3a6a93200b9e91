"""The ablation script's row bookkeeping (the runs themselves are `dvc exp run`)."""

import importlib.util

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
    assert {key: get(key) for key in ablation.REFERENCE} == ablation.cumulative_rows()["reference-eval"][1]


def test_overrides_use_dvc_syntax_and_params_writer_sets_dotted_keys(tmp_path):
    assert ablation.override("evaluate.tta", True) == "evaluate.tta=true"
    assert ablation.override("data.expected_train", None) == "data.expected_train=null"
    assert ablation.override("finetune.unfreeze", [1, 2, "all"]) == "finetune.unfreeze=[1,2,all]"
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 25\n  lr: 0.001\n")
    ablation.write_params(path, {"train.epochs": 50, "evaluate.tta": True})
    assert yaml.safe_load(path.read_text()) == {"train": {"epochs": 50, "lr": 0.001}, "evaluate": {"tta": True}}

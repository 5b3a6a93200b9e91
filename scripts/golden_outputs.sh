#!/usr/bin/env bash
# Every output a user sees, of one revision, for a change that must change none of them (a refactor): the
# mini pipeline (isic2016-mini, 2 + 1 epochs, all three fine-tuning levels, 2-fold CV and its ensemble, 24
# isic2018-extra images as an external set, 6 of them calibrating), then, on its models, `lesionseg predict`
# (the exported model, with overlays; the CV fold models as an ensemble with flags overriding the settings),
# `lesionseg evaluate` (the exported model, and a training checkpoint with flags), `lesionseg calibrate` and
# the MLflow pyfunc's three outputs. Compare two such folders with scripts/compare_outputs.py:
#
#   scripts/golden_outputs.sh HEAD~3 /tmp/golden/before     # before the first change
#   scripts/golden_outputs.sh HEAD /tmp/golden/after         # after the last
#   .venv/bin/python scripts/compare_outputs.py /tmp/golden/before /tmp/golden/after
#
# Each revision runs in a clone of this repository in a temporary folder, with this checkout's .venv and the
# clone's code first on PYTHONPATH. Needs ../shared (data and weights). About 10 min on 2 cores.
# Usage: scripts/golden_outputs.sh REV OUT
set -euo pipefail
rev=$1
out=$(realpath -m "$2")
here=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "$here/.." && pwd)/shared
[ -d "$shared/data/isic2016-mini" ] || { echo "$shared/data/isic2016-mini is missing" >&2; exit 1; }
[ -x "$here/.venv/bin/python" ] || { echo "no $here/.venv: run make setup first" >&2; exit 1; }

work=$(mktemp -d)
repo=$work/repo slice=$work/isic2018-slice
git clone -q "$here" "$repo" && git -C "$repo" checkout -q "$rev"
git -C "$repo" config user.email golden@lesionseg.invalid && git -C "$repo" config user.name golden
export PYTHONPATH=$repo PATH=$here/.venv/bin:$PATH
mkdir -p "$slice/images" "$slice/masks" "$out"
for image in $(find "$shared/data/isic2018-extra/images" -name '*.jpg' | sort | head -24); do
  stem=$(basename "$image" .jpg)
  ln -s "$image" "$slice/images/" && ln -s "$shared/data/isic2018-extra/masks/${stem}_segmentation.png" "$slice/masks/"
done

cd "$repo"
dvc exp run -n golden -S "download.source=$shared/data/isic2016-mini" -S data.expected_train=40 \
  -S data.expected_test=16 -S "train.encoder_weights=$shared/weights/mobilenet_v2_imagenet.pth" \
  -S train.epochs=2 -S ++finetune.epochs=1 -S cv.folds=2 -S "+evaluate.external.isic2018_extra=$slice" \
  -S +evaluate.calibrate.isic2018_extra=6 > "$out/dvc.log" 2>&1
mkdir -p "$out/pipeline"
cp -r reports/metrics.json reports/per_image reports/cv reports/comparison.md reports/comparison.csv \
  models/model_card.json models/model_card.md "$out/pipeline/"

cli=(python -m lesionseg.cli)
test_images=$(dirname "$(find data/raw -type f -name '*.jpg' -path '*Test_Data*' | head -1)")
members=(models/cv/fold0/finetune_all.pt models/cv/fold1/finetune_all.pt)
"${cli[@]}" predict "$test_images" --checkpoint models/model.pt --output "$out/predict" --overlay --quiet \
  | sed "s|$out|OUT|g" > "$out/predict.txt"
"${cli[@]}" predict "$test_images" --checkpoint "${members[@]}" --output "$out/predict_ensemble" --quiet \
  --tta --zoom --keep-largest --threshold 0.6 --review-threshold 0.5 | sed "s|$out|OUT|g" > "$out/predict_ensemble.txt"
"${cli[@]}" evaluate --checkpoint models/model.pt --images "$slice" --json --per-image "$out/evaluate.csv" \
  > "$out/evaluate.json"
"${cli[@]}" evaluate --checkpoint models/frozen.pt --images "$slice" --no-zoom --tta --fill-holes --threshold 0.4 \
  --per-image "$out/evaluate_frozen.csv" > "$out/evaluate_frozen.txt"
"${cli[@]}" calibrate --checkpoint models/model.pt --images "$slice" --output "$out/calibrated.pt" --json \
  > "$out/calibrate.json"
python - "$out" "$slice" <<'PY'
import sys
from pathlib import Path

import numpy as np

from lesionseg.data.images import model_input
from lesionseg.serving.export import LesionSegPyfunc

out, images = Path(sys.argv[1]), sorted((Path(sys.argv[2]) / "images").iterdir())[:12]


class Context:
    artifacts = {"checkpoint": "models/model.pt"}


pyfunc = LesionSegPyfunc()
pyfunc.load_context(Context())
batch = np.stack([model_input(path, 128) for path in images])
arrays = {
    "mask": pyfunc.predict(None, batch),
    "probabilities": pyfunc.predict(None, batch, {"output": "probabilities"}),
    "mask_overridden": pyfunc.predict(None, batch, {"threshold": 0.7, "zoom": False, "tta": False}),
}
scored = pyfunc.predict(None, batch, {"output": "mask_quality", "review_threshold": 0.6})
np.savez(out / "pyfunc.npz", **arrays, **{f"mask_quality_{k}": v for k, v in scored.items()})
PY
rm -rf "$work"
echo "wrote $out"

"""One model's entry of ``reports/metrics.json`` as a typed record, and the file as a whole.

The file stays what ``dvc metrics``, ``dvc exp show`` and MLflow's readers know: per model a flat object of test
scores, the validation split's (``val_``), parameter counts (``params_``), the external sets under ``external``
(set -> scores and ``n``) and a few facts (``lr``, ``epochs``, ``best_epoch``, an ensemble's ``members`` and
``member_model``, the ``review_threshold``). :class:`ModelMetrics` sorts the keys into those groups once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from lesionseg.errors import DataError
from lesionseg.evaluation.evaluate import EXTERNAL_KEY, VALIDATION_PREFIX

_PARAMS_PREFIX = "params_"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class ModelMetrics:
    """A model's scores and facts. Score dicts map a metric name (no prefix) to its mean over images."""

    test: dict[str, float]
    val: dict[str, float] = field(default_factory=dict)
    external: dict[str, dict[str, float]] = field(default_factory=dict)  # set -> scores and "n" (images)
    params: dict[str, int] = field(default_factory=dict)  # "total", "trainable", "frozen"
    # Facts, not scores. None: not known for this model (a trained phase has lr/epochs/best_epoch, the
    # cross-validation ensemble members/member_model); left out of the JSON.
    lr: float | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    members: int | None = None
    member_model: str | None = None
    # The quality below which a mask is flagged for review (lesionseg.evaluation.review), chosen on the
    # validation split (the ensemble: on out-of-fold predictions); the test and external scores
    # review_auroc, review_caught, review_accepted_jaccard, review_flagged are at this threshold.
    review_threshold: float | None = None

    @classmethod
    def info_keys(cls) -> tuple[str, ...]:
        """The facts' JSON keys, in the order they are written."""
        return tuple(f.name for f in fields(cls) if f.name not in ("test", "val", "external", "params"))

    @classmethod
    def from_json(cls, entry: dict, model: str = "") -> ModelMetrics:
        """The record of one model's ``metrics.json`` entry. A key that is neither a group's nor a fact
        must hold a number (a test score); anything else is a ``ValueError`` naming ``model`` and the key,
        so a new kind of entry is declared here rather than read as a score."""
        record, info = cls(test={}), cls.info_keys()
        for key, value in entry.items():
            if key == EXTERNAL_KEY:
                record.external = {name: dict(scores) for name, scores in value.items()}
            elif key.startswith(_PARAMS_PREFIX):
                record.params[key[len(_PARAMS_PREFIX) :]] = value
            elif key.startswith(VALIDATION_PREFIX):
                record.val[key[len(VALIDATION_PREFIX) :]] = value
            elif key in info:
                setattr(record, key, value)
            elif _is_number(value):
                record.test[key] = value
            else:
                raise ValueError(f"metrics of {model or 'a model'}: {key!r} = {value!r} is not a score")
        return record

    def to_json(self) -> dict:
        """The ``metrics.json`` entry, keys in the evaluate stage's order (test scores, external sets,
        validation scores, parameter counts, facts): ``from_json(e).to_json() == e``, order included,
        for every entry the pipeline writes."""
        entry = dict(self.test)
        if self.external:
            entry[EXTERNAL_KEY] = {name: dict(scores) for name, scores in self.external.items()}
        entry.update({VALIDATION_PREFIX + k: v for k, v in self.val.items()})
        entry.update({_PARAMS_PREFIX + k: v for k, v in self.params.items()})
        entry.update({k: getattr(self, k) for k in self.info_keys() if getattr(self, k) is not None})
        return entry

    def numbers(self) -> dict[str, float]:
        """Every number of the entry, flat, named as ``dvc metrics`` names them (``external.<set>.<metric>``);
        text facts (``member_model``) left out."""
        flat = {}
        for key, value in self.to_json().items():
            if key == EXTERNAL_KEY:
                flat.update({f"{key}.{name}.{k}": v for name, scores in value.items() for k, v in scores.items()})
            elif _is_number(value):
                flat[key] = value
        return flat


def parse_metrics(text: str, source) -> dict[str, ModelMetrics]:
    """Model name -> record, from the text of a ``metrics.json``; ``DataError`` naming ``source`` if it is not one."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(source, f"not valid JSON ({exc})") from exc
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise DataError(source, "not a metrics file: expected an object of models, each an object of metrics")
    try:
        return {name: ModelMetrics.from_json(entry, name) for name, entry in entries.items()}
    except (ValueError, AttributeError) as exc:  # AttributeError: "external" not an object of objects
        raise DataError(source, str(exc)) from exc


def metrics_json(records: dict[str, ModelMetrics]) -> dict[str, dict]:
    """The whole ``metrics.json`` object for ``records`` (model name -> record)."""
    return {name: record.to_json() for name, record in records.items()}

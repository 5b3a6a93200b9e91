"""The page the MLflow UI opens on: the lesionseg experiment's runs table with its headline columns.

:func:`view_tag` is the experiment tag of a saved view (the UI's own "Save view" format) that shows the headline
columns; :func:`runs_page_url` is the link that applies it in the UI's model-training mode (``make mlflow-ui``
prints it). Why a link, and MLflow's code it relies on: docs/mlflow-ui.md.
"""

from __future__ import annotations

import json

_VIEW_ID = "lesionseg-models"
_VIEW_NAME = "lesionseg: models and headline scores"
_TAG_PREFIX = "mlflow.sharedViewState."

# The runs table's headline columns, in this order: what the evaluate stage logs on each model's run
# (test_ + metric), the parameter counts and unfreeze level of the training phase, its learning rate.
_HEADLINE_METRICS = ("test_orig_jaccard", "test_orig_dice", "test_orig_jaccard_thresholded")
_HEADLINE_PARAMETER_COUNTS = ("params_trainable", "params_frozen")
_HEADLINE_PARAMS = ("unfreeze", "lr")


def _column_key(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: ``metrics.`test_orig_jaccard```, ``params.`lr```."""
    return f"{kind}.`{name}`"


def _headline_columns() -> list[str]:
    return [
        *(_column_key("metrics", name) for name in (*_HEADLINE_METRICS, *_HEADLINE_PARAMETER_COUNTS)),
        *(_column_key("params", name) for name in _HEADLINE_PARAMS),
    ]


def _view_state() -> dict:
    """The runs page's state in the saved view: the headline columns shown, every run drawn in charts.

    The UI fills what a view leaves out (filters, sort order: every active run, newest first) with
    its defaults; it never takes expanded rows or pinned runs from a view (they name run ids).
    """
    columns = _headline_columns()
    # columnOrder puts the listed columns first, in this order, after the pinned run name and start time
    # (without it the UI sorts metrics, then params, alphabetically); Duration stays next to them.
    order = [_column_key("attributes", "Duration"), *columns]
    return {"selectedColumns": columns, "columnOrder": order, "runsHiddenMode": "SHOW_ALL"}


def view_tag(created_at_ms: int) -> tuple[str, str]:
    """The experiment tag (key, value) that holds the saved view."""
    envelope = {"name": _VIEW_NAME, "createdAt": created_at_ms, "state": json.dumps(_view_state())}
    return _TAG_PREFIX + _VIEW_ID, json.dumps(envelope)


def view_is_current(tag_value: str | None) -> bool:
    """Whether an existing tag value already holds this view's state (so it is not rewritten)."""
    try:
        return json.loads(json.loads(tag_value)["state"]) == _view_state()
    except (TypeError, ValueError, KeyError):
        return False


def runs_page_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table in the model-training view, with the saved view applied."""
    return (
        f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={_VIEW_ID}"
    )

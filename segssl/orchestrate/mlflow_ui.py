"""How a sweep's experiment opens in the MLflow UI (checked against MLflow 3.17's UI bundle).

MLflow 3's UI has two modes, "GenAI apps & agents" (its default: an experiment opens on an empty
traces overview) and "Machine learning" (the runs table). The mode is the UI's ``workflowType``
(``genai`` or ``machine_learning``), read from the page URL's ``workflowType`` query parameter
before the browser's stored choice; the experiment tag ``mlflow.experimentKind``
(``custom_model_development`` is "Machine learning") records the experiment's type for the
UI's type selector. The runs table's columns and sort order come from a shared view: the
experiment tag ``mlflow.sharedViewState.<key>`` holds the view as JSON and the URL parameter
``viewStateShareKey=<key>`` applies it. A sweep's experiment gets both tags, and
:func:`ui_url` is the link that opens it on its runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["EXPERIMENT_KIND", "VIEW_KEY", "experiment_ui_tags", "ui_command", "ui_url"]

KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI's "Machine learning" experiment type
VIEW_KEY = "segssl"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
DEFAULT_PORT = 5000
RUN_NAME_WIDTH = 340  # px: "bim > finetune | lv | 2 scans | seed 1" without an ellipsis

PARAM_COLUMNS = ("method.name", "data.labeled_scans", "data.target", "seed")
METRIC_COLUMNS = ("test/dsc", "best_val/dsc", "best_epoch")


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def experiment_ui_tags(metric: str = "test/dsc") -> dict[str, str]:
    """Experiment tags that make the UI open the sweep as a machine-learning experiment whose
    runs table shows method, labeled scans, target, seed and the Dice metrics, best first."""
    metrics = dict.fromkeys([metric, *METRIC_COLUMNS])
    columns = [_column("metrics", k) for k in metrics] + [
        _column("params", k) for k in PARAM_COLUMNS
    ]
    name = _column("attributes", "Run Name")
    view: dict[str, Any] = {
        "selectedColumns": columns,
        # the UI applies widths to the columns of columnOrder only
        "columnOrder": [name, "runDateAndNestInfo", "duration", *columns],
        "columnWidths": {name: RUN_NAME_WIDTH},
        "orderByKey": _column("metrics", metric),
        "orderByAsc": False,
        "searchFilter": "",
    }
    return {KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: json.dumps(view)}


def ui_url(experiment_id: str | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
    """The link that opens the experiment's runs in machine-learning mode with segssl's view."""
    base = f"http://{host}:{port}/"
    if experiment_id is None:
        return base + "#/experiments?workflowType=machine_learning"
    return (
        f"{base}#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )


def ui_command(tracking_uri: str, experiment_id: str | None) -> str:
    """``mlflow ui ...`` for a SQLite store (a server URI is opened as is), then the link."""
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
        return f"open {base}/{ui_url(experiment_id).split('/', 3)[3]}"
    return f"mlflow ui --backend-store-uri {tracking_uri}\n  then open {ui_url(experiment_id)}"


def tag_experiment(client: Any, experiment_id: str, current: Mapping[str, str]) -> None:
    """Set the UI tags on the experiment where they differ from ``current`` (its tags)."""
    for key, value in experiment_ui_tags().items():
        if current.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)

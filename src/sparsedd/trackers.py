"""`sparsedd export RUN --to mlflow[=URI]` and `--to wandb[=PROJECT]`: a run's curve logged to an experiment tracker.

Each pruning level is one step (step = level): its metrics (the index's per-level columns: test and train
accuracies, losses, sparsity, density, remaining weights, learning distance, ...; with several seeds the mean
over the seeds under the plain name and each seed's own as ``seed<S>/<name>``; a level is logged once every
seed has finished it), the run's config as parameters (dotted keys, ``train.lr``), the curve that
`sparsedd plot` draws as an artifact (``curve.png``), and tags naming the sparsedd run.

Logging again adds nothing: MLflow's run is found by its tag ``sparsedd.run_id`` and only the (metric, step)
pairs, parameters and artifacts it lacks are logged (a run that finished more levels since gets those); W&B's
record of the levels logged is kept beside its offline runs (``ROOT/wandb/sparsedd-<run id>.json``).

MLflow logs to the file store ``ROOT/mlruns`` by default (``mlflow ui --backend-store-uri ROOT/mlruns``; MLflow
3 asks ``MLFLOW_ALLOW_FILE_STORE=true`` of a file store, set here while logging), or to the tracking URI given.
W&B runs offline by default, in ``ROOT/wandb/`` (``wandb sync`` uploads them), unless ``WANDB_MODE`` says
otherwise. Neither package is a dependency: each is imported only here, and its absence is a one-line error.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import pandas as pd

from . import config_load
from .errors import SparseddError
from .inputs import folder
from .results import resolve_run, run_config, run_curve
from .store import Store, default_root, read_json, write_json
from .store.index import LEVEL_COLUMNS

TRACKERS = {"mlflow": "mlflow-skinny", "wandb": "wandb"}  # name -> the package to install
EXPERIMENT = "sparsedd"  # MLflow's experiment and W&B's project, by default
TAG = "sparsedd.run_id"


def parse_target(text: str) -> tuple[str, str | None]:
    """``mlflow``, ``mlflow=URI``, ``wandb`` or ``wandb=PROJECT`` -> (tracker, where or None)."""
    name, eq, where = text.partition("=")
    if name not in TRACKERS or (eq and not where):
        raise SparseddError(f"--to takes mlflow[=URI] or wandb[=PROJECT], not {text!r}")
    return name, where or None


def writes_root(tracker: str, where: str | None) -> bool:
    """Whether logging writes under the results root: MLflow's default file store, and W&B's folder and record."""
    return where is None or tracker == "wandb"


def log_run(run: str, to: str, *, root: str | os.PathLike | None = None, experiment: str = EXPERIMENT) -> dict[str, Any]:
    """Log ``run`` (an id or a unique prefix) to the tracker ``to`` (``mlflow``, ``mlflow=URI``, ``wandb``,
    ``wandb=PROJECT``); ``experiment``: MLflow's experiment (W&B: the project, where ``to`` names none).
    Returns what was done: ``{"tracker", "where", "run", "steps", "params", "artifacts"}`` (counts added)."""
    tracker, where = parse_target(to)
    _require(tracker)  # before the store is touched
    store = Store(folder(root if root is not None else default_root(), "root", writable=writes_root(tracker, where)))
    run_id = resolve_run(store, run)
    config = run_config(store, run_id)
    curve = run_curve(store, run_id)
    steps = level_steps(curve, config_load.from_dict(config).seeds)
    if not steps:
        raise SparseddError(f"run {run_id} has no level every seed has finished yet; run it with `sparsedd run` first")
    preset = next((r["preset"] for r in store.index.run_rows() if r["run_id"] == run_id), None)
    tags = {TAG: run_id, "sparsedd.version": metadata.version("sparsedd"), **({"sparsedd.preset": preset} if preset else {})}
    facts = {"run_id": run_id, "config": config, "curve": curve, "steps": steps, "params": flat_params(config),
             "tags": tags}
    if tracker == "mlflow":
        uri = _mlflow_uri(where) if where else store.mlflow_dir().resolve().as_uri()
        return to_mlflow(uri, experiment, facts)
    return to_wandb(store, where or experiment, facts)


def level_steps(curve: pd.DataFrame, seeds: int) -> list[tuple[int, dict[str, float]]]:
    """(level, metrics) of each level every seed has finished, in level order: the finite metrics, means over
    the seeds (a metric NULL or not finite for one seed is left out), and with several seeds each seed's."""
    out = []
    for level, rows in curve.groupby("level", sort=True):
        if rows["seed"].nunique() < seeds:
            continue
        values: dict[str, float] = {}
        for column in (c for c in LEVEL_COLUMNS if c in rows):
            mean = float(rows[column].mean(skipna=False))
            if math.isfinite(mean):
                values[column] = mean
            if seeds > 1:
                values.update({f"seed{int(s)}/{column}": float(v) for s, v in zip(rows["seed"], rows[column])
                               if math.isfinite(v)})
        out.append((int(level), values))
    return out


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """The config as dotted keys with text values (lists and numbers as JSON: ``[32, 32]``, ``0.1``, ``true``)."""
    import json

    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config_load.flatten(config).items()}


def _require(tracker: str) -> None:
    module = "mlflow" if tracker == "mlflow" else "wandb"
    try:
        __import__(module)
    except ImportError:
        raise SparseddError(f"--to {tracker} needs the {module} package: pip install {TRACKERS[tracker]}") from None


def _mlflow_uri(where: str) -> str:
    """A tracking URI as given (``http://...``, ``sqlite:///...``, ``file:...``, ``databricks``), or a folder's
    path as a file store's ``file://`` URI."""
    return where if urlparse(where).scheme or where == "databricks" else Path(where).expanduser().resolve().as_uri()


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables set for the duration, where the user has not set them."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _figure(facts: dict[str, Any], folder_: Path) -> Path:
    """The curve `sparsedd plot` draws, as ``curve.png`` in ``folder_``."""
    from .report.plots import plot_curve
    from .report.tables import run_title

    return plot_curve(facts["curve"], folder_ / "curve.png", run_title(facts["config"], facts["run_id"]))


def to_mlflow(uri: str, experiment: str, facts: dict[str, Any]) -> dict[str, Any]:
    """Log to MLflow at ``uri``: one MLflow run per sparsedd run, found again by its tag."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with _environment(MLFLOW_ALLOW_FILE_STORE="true", MLFLOW_DISABLE_TELEMETRY="true"):
        try:
            client = MlflowClient(tracking_uri=uri)
            run = _mlflow_run(client, experiment, facts)
            added = _mlflow_log(client, run, facts)
        except MlflowException as e:
            raise SparseddError(f"mlflow at {uri}: {str(e.message).strip().splitlines()[0]}") from None
    return {"tracker": "mlflow", "where": uri, "experiment": experiment, "run": run.info.run_id, **added}


def _mlflow_run(client, experiment: str, facts: dict[str, Any]):
    """The MLflow run of this sparsedd run in ``experiment`` (the oldest, if several), made where there is none."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None and exp.lifecycle_stage != "active":
        raise SparseddError(f"mlflow experiment {experiment!r} is deleted; restore it (mlflow experiments restore) or "
                            "give another --experiment")
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`{TAG}` = '{facts['run_id']}'",
                               order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        return found[0]
    from .report.tables import run_title

    tags = {**facts["tags"], "mlflow.note.content": run_title(facts["config"], facts["run_id"])}
    return client.create_run(exp_id, run_name=facts["run_id"], tags=tags)


def _mlflow_log(client, run, facts: dict[str, Any]) -> dict[str, int]:
    """What the MLflow run lacks of the parameters, (metric, step) pairs and artifacts; the counts added."""
    from mlflow.entities import Metric, Param

    rid = run.info.run_id
    params = [Param(k, v) for k, v in facts["params"].items() if k not in run.data.params]
    keys = {k for _, values in facts["steps"] for k in values}
    have = {(k, m.step) for k in keys for m in client.get_metric_history(rid, k)}
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, level) for level, values in facts["steps"] for k, v in values.items()
               if (k, level) not in have]
    for i in range(0, len(params), 100):  # MLflow's limits per batch
        client.log_batch(rid, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    artifacts = 0
    if metrics or not client.list_artifacts(rid):  # the figure drawn again once it has more to show
        with tempfile.TemporaryDirectory() as tmp:
            client.log_artifact(rid, str(_figure(facts, Path(tmp))))
        artifacts = 1
    if metrics or params:
        client.set_terminated(rid, "FINISHED")
    return {"steps": len({m.step for m in metrics}), "params": len(params), "artifacts": artifacts}


def to_wandb(store: Store, project: str, facts: dict[str, Any]) -> dict[str, Any]:
    """Log to W&B (offline in ``ROOT/wandb/`` unless ``WANDB_MODE`` says otherwise): the levels beyond those its
    record says were logged, as one W&B run per sparsedd run (id ``sparsedd-<run id>``, resumed)."""
    import wandb

    record = store.wandb_record(facts["run_id"])
    logged = read_json(record)["levels"] if record.exists() else []
    new = [(level, values) for level, values in facts["steps"] if level > max(logged, default=-1)]
    mode = os.environ.get("WANDB_MODE") or "offline"
    done = {"tracker": "wandb", "where": f"project {project} ({mode}, {record.parent})",
            "run": f"sparsedd-{facts['run_id']}", "steps": len(new), "params": 0, "artifacts": 0}
    if not new:
        return done
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True, save_code=False)
    with _environment(WANDB_SILENT="true"), tempfile.TemporaryDirectory() as tmp:
        try:
            run = wandb.init(project=project, dir=str(store.wandb_dir()), id=done["run"], name=facts["run_id"],
                             config=facts["params"], tags=[facts["run_id"]], mode=mode, resume="allow",
                             settings=settings)
        except wandb.errors.Error as e:  # e.g. online without a login
            raise SparseddError(f"wandb ({mode}): {str(e).strip().splitlines()[0]}") from None
        try:
            for level, values in new:
                run.log(values, step=level)
            run.log({"curve": wandb.Image(str(_figure(facts, Path(tmp))))}, step=new[-1][0])
        finally:
            run.finish()
    write_json(record, {"levels": logged + [level for level, _ in new], "project": project})
    return {**done, "params": 0 if logged else len(facts["params"]), "artifacts": 1}


__all__ = ["TRACKERS", "level_steps", "log_run", "parse_target", "writes_root"]

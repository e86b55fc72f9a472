"""MLflow tracking: one parent run per pipeline execution, one child run per stage execution,
never at the cost of the trained model.

The parent is the row to compare in ``mlflow ui``: it is named after the DVC experiment
($DVC_EXP_NAME), or ``repro@<commit>`` for a plain ``dvc repro``, and carries the whole params.yaml,
flattened (any two experiments compare on any key, ``data.family_size`` too, which no tracked
stage reads) plus the headline test metrics (:meth:`Run.log_headline`); each stage's run is
nested under it. Stages find their parent by a key (:func:`pipeline_key`): the experiment name
or the commit, with a hash of params.yaml, so every stage of one execution shares it.

Store: ``sqlite:///<root>/mlflow.db`` with artifacts in ``<root>/mlruns``, where root is $DVC_ROOT
(set by ``dvc exp run``, also inside ``--temp``/``--queue`` copies) or else the current directory
(stages run from the repo root), so every experiment lands in the same database. Browse with
``mlflow ui --backend-store-uri sqlite:///mlflow.db``.

Every MLflow call is wrapped: a failure logs one warning and turns the rest of the run into
no-ops. mlflow is imported only when tracking is enabled (about 2 s).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from . import distributed
from .config import PARAMS_FILE, load_params

if TYPE_CHECKING:
    from .params import TrackingParams

log = logging.getLogger("aladin")


def tracking_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{tracking_root() / 'mlflow.db'}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'teacher': {'lr': 1}} -> {'teacher.lr': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def pipeline_key() -> tuple[str, str]:
    """(key, display name) of the pipeline execution this stage belongs to.

    The key holds the params.yaml digest and the commit the run starts from (an experiment's
    baseline), so an experiment name used again after `dvc exp remove`, with other params or on
    another commit, gets a parent of its own instead of clashing with the old one's params."""
    path = Path(PARAMS_FILE)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8] if path.is_file() else "noparams"
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        baseline = (os.environ.get("DVC_EXP_BASELINE_REV") or "nobaseline")[:8]
        return f"exp:{exp}:{baseline}:{digest}", exp
    commit = (git_commit() or "nocommit")[:8]
    return f"repro:{commit}:{digest}", f"repro@{commit}"


class Run:
    """A handle on one MLflow run (and its pipeline parent); every method is safe to call after a
    failure (no-op)."""

    def __init__(self, client: Any = None, run_id: str | None = None, parent_id: str | None = None) -> None:
        self.client, self.run_id, self.parent_id = client, run_id, parent_id

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # tracking must never cost the stage its result
            log.warning("MLflow %s failed, tracking disabled for this run: %s", what, e)
            self.run_id = None

    def log_params(self, params: dict[str, Any], run_id: str | None = None) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):                      # MLflow's batch limit
            self._call("log_params", self.client.log_batch, run_id or self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, run_id: str | None = None) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            self._call("log_metrics", self.client.log_batch, run_id or self.run_id, metrics=items[i:i + 1000])

    def log_headline(self, metrics: dict[str, float]) -> None:
        """Metrics for the pipeline's parent run (the figures to compare across experiments)."""
        if self.parent_id is not None:
            self.log_metrics(metrics, run_id=self.parent_id)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call("set_tags", self.client.log_batch, self.run_id,
                   tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file, or a directory (stored under its own name); a missing path is skipped."""
        path = Path(path)
        if not self.active or not path.exists():
            return
        if path.is_dir():
            dest = f"{artifact_path}/{path.name}" if artifact_path else path.name
            self._call("log_artifacts", self.client.log_artifacts, self.run_id, str(path), dest)
        else:
            self._call("log_artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def end(self, status: str) -> None:
        if self.active:
            self._call("end", self.client.set_terminated, self.run_id, status)
        if self.active and self.parent_id is not None:    # the parent's status: its last stage's
            self._call("end", self.client.set_terminated, self.parent_id, status)


def _start(stage: str, params: dict[str, Any], cfg: TrackingParams, uri: str) -> Run:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    for name in ("alembic", "mlflow"):      # mlflow sets its loggers up on import: quiet them after
        logging.getLogger(name).setLevel(logging.WARNING)

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        # Artifacts next to the DB, not in the cwd (a `dvc exp run --temp` copy is deleted).
        exp_id = client.create_experiment(cfg.experiment, artifact_location=(tracking_root() / "mlruns").as_uri())
    else:
        exp_id = exp.experiment_id
    tags = {"mlflow.source.git.commit": git_commit(), "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
            "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV")}
    tags = {k: v for k, v in tags.items() if v is not None}
    key, name = pipeline_key()
    found = client.search_runs([exp_id], filter_string=f"tags.pipeline_key = '{key}'", max_results=1)
    if found:
        parent_id = found[0].info.run_id
        client.update_run(parent_id, status="RUNNING")
    else:
        parent_id = client.create_run(exp_id, run_name=name, tags={**tags, "pipeline_key": key,
                                                                   "pipeline": "true"}).info.run_id
        # params.yaml as written, never a stage's typed copy: MLflow refuses a param logged again
        # with another spelling (`temperature: 1` in the file is 1.0 in the dataclass).
        Run(client, parent_id).log_params(load_params())
    run = client.create_run(exp_id, run_name=stage,
                            tags={**tags, "stage": stage, "mlflow.parentRunId": parent_id})
    handle = Run(client, run.info.run_id, parent_id)
    handle.log_params(params)
    return handle


@contextlib.contextmanager
def mlflow_run(stage: str, params: dict[str, Any], cfg: TrackingParams | None,
               tracking_uri: str | None = None) -> Iterator[Run]:
    """``with mlflow_run("teacher", params, cfg) as run: run.log_metrics(...); run.log_artifact(p)``.

    The run ends FINISHED, or FAILED when the block raises (the exception propagates). With
    tracking disabled (`cfg` None or not enabled) or broken, and on every DDP rank but 0, the
    handle is a no-op.
    `tracking_uri` overrides $MLFLOW_TRACKING_URI, which overrides the default sqlite store.
    """
    run = Run()
    if cfg is not None and cfg.enabled and distributed.is_main():      # one run per stage execution, rank 0's
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        t0 = time.perf_counter()
        try:
            run = _start(stage, params, cfg, uri)
            log.info("MLflow run %s in %s (%.1f s to start)", run.run_id, uri, time.perf_counter() - t0)
        except Exception as e:
            log.warning("MLflow tracking unavailable (%s), continuing without it: %s", uri, e)
    try:
        yield run
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")

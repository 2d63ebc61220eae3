"""MLflow: tracking URI resolution, runs, live metric logging from Ray Train, model logging and pulls."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
import uuid
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from ray.train import UserCallback

from unlearn_core.config import TrackingConfig

SHA_TAG = "weights_sha256"


def resolve_tracking_uri(cfg: TrackingConfig, workdir: str | Path) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else the embedded SQLite store in the workdir."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path(workdir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def artifact_root(tracking_uri: str, workdir: str | Path) -> str | None:
    """For the embedded SQLite store: a local artifact folder beside it; servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
        folder.mkdir(parents=True, exist_ok=True)
        return folder.resolve().as_uri()
    return None


def ensure_experiment(tracking_uri: str, name: str, workdir: str | Path) -> str:
    """Create the experiment once (driver side) and return its id."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(tracking_uri, workdir))
    except mlflow.exceptions.MlflowException:
        exp = client.get_experiment_by_name(name)  # another driver created it first
        if exp is None:
            raise
        return exp.experiment_id


class MlflowReportCallback(UserCallback):
    """Ray Train controller callback: logs rank 0's reported metrics to an MLflow run as they arrive.

    Each step is logged once. After a worker failure Ray Train restarts from the last checkpoint
    and re-runs (and re-reports) the steps after it; MLflow keeps every point of a metric's history
    and cannot replace one, so a report whose step is not past the last one logged is skipped (the
    history keeps the value first measured for that step).

    A tracking server that is briefly unreachable does not stop training: an ``http(s)`` server that
    refuses connections is detected with a short TCP probe (MLflow's own client would retry with
    backoff for minutes while the controller waits), failed values stay in a buffer with a warning,
    and are retried on the next report. The callback runs on the controller actor (a copy of the
    driver's object, on the driver's node), so values still unsent when training ends are handed to
    the driver through a spool file; the driver's ``flush()`` sends them or says how many were lost.
    """

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "train/", probe_timeout_s: float = 3.0) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.prefix = prefix
        self.probe_timeout_s = probe_timeout_s
        self._pending: list[tuple[str, float, int]] = []
        self._last_step: int | None = None
        self._owner_pid = os.getpid()
        self._spool = Path(tempfile.gettempdir()) / f"mlflow-pending-{run_id}-{uuid.uuid4().hex[:8]}.json"

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        m = metrics[0]
        step = int(m.get("step", 0))
        if "step" in m:
            if self._last_step is not None and step <= self._last_step:
                return  # re-run after a restart from a checkpoint: this step is already logged
            self._last_step = step
        for k, v in m.items():
            if k != "step" and isinstance(v, int | float):
                self._pending.append((self.metric_name(k), float(v), step))
        self._flush(final=False)

    def metric_name(self, key: str) -> str:
        """``loss`` -> ``train/loss``; an in-training evaluation ``forget.leak_rate`` -> ``eval/forget.leak_rate``
        (the run's final evaluation keeps the bare name); a name with a ``/`` is kept as it is."""
        if "/" in key:
            return key
        return f"eval/{key}" if "." in key else f"{self.prefix}{key}"

    def flush(self) -> bool:
        """Send what is still buffered (call once training is over); False if values were lost."""
        if os.getpid() == self._owner_pid and self._spool.exists():
            try:
                self._pending.extend(tuple(x) for x in json.loads(self._spool.read_text()))
            finally:
                self._spool.unlink(missing_ok=True)
        return self._flush(final=True)

    def _flush(self, final: bool) -> bool:
        if not self._pending:
            return True
        from mlflow.entities import Metric

        try:
            self._probe()
            client = MlflowClient(self.tracking_uri)
            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, s) for k, v, s in self._pending]
            for i in range(0, len(batch), 500):
                client.log_batch(self.run_id, metrics=batch[i : i + 500])
                del self._pending[: len(batch[i : i + 500])]
            self._spool.unlink(missing_ok=True)
            return True
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not kill training
            why = f"{type(exc).__name__}: {exc}"
            if final:
                print(f"WARNING: MLflow still unreachable at {self.tracking_uri} at the end of training ({why}); "
                      f"{len(self._pending)} metric values were NOT logged to MLflow run {self.run_id}",
                      file=sys.stderr)
            else:
                print(f"WARNING: MLflow unreachable at {self.tracking_uri} ({why}); {len(self._pending)} metric "
                      "values buffered, will retry on the next report and at the end of training", file=sys.stderr)
                if os.getpid() != self._owner_pid:  # on the controller: keep them for the driver
                    try:
                        tmp = self._spool.with_suffix(".tmp")
                        tmp.write_text(json.dumps(self._pending))
                        tmp.replace(self._spool)
                    except OSError as err:
                        print(f"WARNING: could not spool unsent metrics to {self._spool}: {err}", file=sys.stderr)
            return False

    def _probe(self) -> None:
        """Fail fast when an http(s) tracking server does not accept connections."""
        url = urllib.parse.urlparse(self.tracking_uri)
        if url.scheme in ("http", "https") and url.hostname:
            port = url.port or (443 if url.scheme == "https" else 80)
            socket.create_connection((url.hostname, port), timeout=self.probe_timeout_s).close()


def weights_sha256(folder: str | Path) -> str:
    h = hashlib.sha256()
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def log_model(
    run_id: str, model_dir: str | Path, registered_name: str | None, *, tracking_uri: str
) -> dict[str, Any]:
    """Log the saved HF folder as an ``mlflow.pyfunc`` model (and register it if a name is given)."""
    from pipelines import pyfunc_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri)
    sha = weights_sha256(model_dir)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag(SHA_TAG, sha)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(pyfunc_model.__file__)),  # models-from-code: no pickled object
                artifacts={"hf_model": str(model_dir)},
                registered_model_name=registered_name,
                metadata={SHA_TAG: sha},
                pip_requirements=["lvlm-unlearn"],
            )
    out = {"model_uri": info.model_uri, SHA_TAG: sha, "version": None}
    if registered_name:
        version = info.registered_model_version
        MlflowClient(tracking_uri).set_model_version_tag(registered_name, str(version), SHA_TAG, sha)
        out["version"] = str(version)
    return out


def set_alias(name: str, alias: str, version: str, *, tracking_uri: str) -> None:
    MlflowClient(tracking_uri).set_registered_model_alias(name, alias, version)


def pull(model_uri: str, out_dir: str | Path, *, tracking_uri: str) -> Path:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> a loadable HF folder, sha256-checked."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    name, ref = _parse_models_uri(model_uri)
    mv = client.get_model_version_by_alias(name, ref[1:]) if ref.startswith("@") else client.get_model_version(name, ref)
    expected = (mv.tags or {}).get(SHA_TAG)
    out = Path(out_dir)
    staging = out.parent / (out.name + ".download")
    if staging.exists():
        shutil.rmtree(staging)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(staging)))
    hf = _hf_folder(local, model_uri)
    got = weights_sha256(hf)
    if expected and got != expected:
        raise ValueError(f"{model_uri}: weights sha256 {got} differs from the one recorded at logging {expected}")
    if out.exists():
        shutil.rmtree(out)
    shutil.move(str(hf), str(out))
    shutil.rmtree(staging, ignore_errors=True)
    (out / "PULLED_FROM.json").write_text(
        json.dumps({"uri": model_uri, "name": name, "version": mv.version, SHA_TAG: got}, indent=2)
    )
    return out


def _hf_folder(local: Path, model_uri: str) -> Path:
    """The ``hf_model`` artifact of a downloaded pyfunc model, as recorded in its MLmodel file."""
    import yaml

    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    arts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    rel = (arts.get("hf_model") or {}).get("path")
    if not rel or not (local / rel).is_dir():
        raise FileNotFoundError(f"{model_uri}: the logged model holds no hf_model artifact")
    return local / rel


def _parse_models_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("models:/"):
        raise ValueError(f"not a models:/ URI: {uri!r} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, "@" + alias
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, version
    raise ValueError(f"{uri!r}: name an alias (@champion) or a version (/3)")

"""MLflow: tracking URI resolution, runs, live metric logging from Ray Train, model logging and pulls."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
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

    A tracking server that is briefly unreachable does not stop training: failed batches stay in a
    buffer, a warning is printed, and they are retried on the next report and at the end.
    """

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "train/") -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.prefix = prefix
        self._pending: list[tuple[str, float, int]] = []

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        m = metrics[0]
        step = int(m.get("step", 0))
        for k, v in m.items():
            if k != "step" and isinstance(v, int | float):
                name = k if "." in k else f"{self.prefix}{k}"
                self._pending.append((name, float(v), step))
        self.flush()

    def flush(self) -> bool:
        if not self._pending:
            return True
        from mlflow.entities import Metric

        try:
            client = MlflowClient(self.tracking_uri)
            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, s) for k, v, s in self._pending]
            for i in range(0, len(batch), 500):
                client.log_batch(self.run_id, metrics=batch[i : i + 500])
            self._pending.clear()
            return True
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not kill training
            print(
                f"WARNING: MLflow unreachable ({type(exc).__name__}: {exc}); "
                f"{len(self._pending)} metric values buffered, will retry",
                file=sys.stderr,
            )
            return False


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
    from pipelines.pyfunc_model import VisionLanguagePyfunc

    mlflow.set_tracking_uri(tracking_uri)
    sha = weights_sha256(model_dir)
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag(SHA_TAG, sha)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=VisionLanguagePyfunc(),
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

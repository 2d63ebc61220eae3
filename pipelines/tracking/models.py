"""The model registry: log a saved HF folder as an ``mlflow.pyfunc`` model, aliases, sha256-checked pulls."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from unlearn_core.models.loading import weights_sha256

SHA_TAG = "weights_sha256"


def log_model(
    run_id: str, model_dir: str | Path, registered_name: str | None, *, tracking_uri: str
) -> dict[str, Any]:
    """Log the saved HF folder as an ``mlflow.pyfunc`` model (and register it if a name is given)."""
    from pipelines.tracking import pyfunc_model

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
    mv = (
        client.get_model_version_by_alias(name, ref[1:])
        if ref.startswith("@")
        else client.get_model_version(name, ref)
    )
    expected = (mv.tags or {}).get(SHA_TAG)
    out = Path(out_dir)
    staging = out.parent / (out.name + ".download")
    if staging.exists():
        shutil.rmtree(staging)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(staging)
        )
    )
    hf = _hf_folder(local, model_uri)
    got = weights_sha256(hf)
    if expected and got != expected:
        raise ValueError(
            f"{model_uri}: weights sha256 {got} differs from the one recorded at logging {expected}"
        )
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


def audit_verdict_line(model_uri: str, *, tracking_uri: str, workdir: str | Path = "workdir") -> str:
    """What the registered version's audit tags say (``unlearn audit`` / ``unlearn sweep --audit`` set them)."""
    client = MlflowClient(tracking_uri)
    name, ref = _parse_models_uri(model_uri)
    mv = (
        client.get_model_version_by_alias(name, ref[1:])
        if ref.startswith("@")
        else client.get_model_version(name, ref)
    )
    tags = mv.tags or {}
    verdict = tags.get("audit_verdict")
    if not verdict:
        return (
            f"audit:    none recorded for {name} version {mv.version} "
            f"(`unlearn audit --model {model_uri} --workdir {workdir}` audits it)"
        )
    failed = tags.get("audit_failed_checks", "-")
    return (
        f"audit:    {verdict.upper()}"
        + (f" (failed: {failed})" if verdict != "pass" else "")
        + f" against {tags.get('audit_reference', '?')}; audit run {tags.get('audit_run_id', '?')}"
    )

"""The model registry: log a saved HF folder as an ``mlflow.pyfunc`` model, aliases, sha256-checked pulls."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from unlearn_core.config import ConfigError
from unlearn_core.models.loading import weights_sha256
from unlearn_core.outputs import check_folder, discard, new_stage, publish_folder

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


def pull(model_uri: str, out_dir: str | Path, *, tracking_uri: str, force: bool = False) -> Path:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> a loadable HF folder, sha256-checked.

    ``out_dir`` follows ``unlearn_core.outputs``: a new or empty folder, or (``force``) an earlier
    output of the project; the download happens in a temporary folder beside it and is moved in whole.
    An unknown model, version or alias is a ``ConfigError`` naming it and what the registry holds."""
    dest = check_folder(out_dir, "--out", force=force, recognise=earlier_pull)
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    name, mv = model_version(client, model_uri, tracking_uri)
    expected = (mv.tags or {}).get(SHA_TAG)
    stage = new_stage(dest)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(stage / "download")
            )
        )
        hf = _hf_folder(local, model_uri)
        got = weights_sha256(hf)
        if expected and got != expected:
            raise ValueError(
                f"{model_uri}: weights sha256 {got} differs from the one recorded at logging {expected}"
            )
        (hf / "PULLED_FROM.json").write_text(
            json.dumps({"uri": model_uri, "name": name, "version": mv.version, SHA_TAG: got}, indent=2)
        )
        publish_folder(hf, dest, "unlearn pull", force=force, recognise=earlier_pull)
    finally:
        discard(stage)  # the download's leftovers (MLmodel, requirements ...)
    return dest


def earlier_pull(folder: Path) -> str | None:
    """A folder `unlearn pull` wrote before output folders carried the marker: it holds PULLED_FROM.json."""
    return "lvlm-unlearn (no marker): unlearn pull" if (folder / "PULLED_FROM.json").is_file() else None


def _model_version(client: MlflowClient, model_uri: str, name: str, ref: str, tracking_uri: str) -> Any:
    """The registry's model version for ``ref`` (``@alias`` or a version number), or a ConfigError."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.startswith("@"):
            return client.get_model_version_by_alias(name, ref[1:])
        return client.get_model_version(name, ref)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=20))
        raise ConfigError(
            f"URI {model_uri}: no registered model {name!r} in {tracking_uri} "
            f"(registered: {', '.join(names) or 'none'})"
        ) from None
    what = f"alias {ref[1:]!r}" if ref.startswith("@") else f"version {ref}"
    aliases = ", ".join(f"@{a}" for a in sorted(model.aliases or {})) or "none"
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        versions = []
    raise ConfigError(
        f"URI {model_uri}: model {name!r} has no {what} in {tracking_uri} "
        f"(aliases: {aliases}; versions: {', '.join(map(str, versions)) or 'none'})"
    ) from None


def model_version(
    client: MlflowClient, model_uri: str, tracking_uri: str = "the tracking store"
) -> tuple[str, Any]:
    """The registered model's name and the version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``
    names; an unknown model, version or alias is a ``ConfigError`` naming what the registry holds."""
    name, ref = _parse_models_uri(model_uri)
    return name, _model_version(client, model_uri, name, ref, tracking_uri)


def _hf_folder(local: Path, model_uri: str) -> Path:
    """The ``hf_model`` artifact of a downloaded pyfunc model, as recorded in its MLmodel file."""
    from unlearn_core.bounded import load_yaml

    mlmodel = load_yaml((local / "MLmodel").read_bytes(), f"{model_uri}: MLmodel")
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
    name, mv = model_version(MlflowClient(tracking_uri), model_uri, tracking_uri)
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

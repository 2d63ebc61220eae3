"""The in-training audit probe of a sweep (``unlearn_core.audit.probe``): its rows and the retrained
reference's figures, prepared once per sweep and handed to every trial's training workers.

A sweep whose objective names an ``audit_probe.*`` metric gets it: the reference is trained first when
the workdir has none (``ensure_reference``), and its probe figures are cached in
``WORKDIR/audit/probe-reference-<key>.json`` (keyed by its weights, the shards and the settings).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.audit.reference import audit_config, ensure_reference
from pipelines.workspace import Workspace

PROBE_PREFIX = "audit_probe."


def wants_probe(objective_terms: dict[str, float] | None, metric: str = "") -> bool:
    """Whether an objective (its terms, or its single metric) reads a probe figure."""
    return any(name.startswith(PROBE_PREFIX) for name in [*(objective_terms or {}), metric])


def probe_payload(workdir: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``{"rows", "settings", "reference"}`` for ``WorkerSpec.audit_probe`` (plain data)."""
    from pipelines import tracking
    from pipelines.shards import load_manifest, load_shard_rows
    from unlearn_core.audit.probe import ProbeSettings, probe_figures, probe_rows
    from unlearn_core.data.schema import SPLITS

    ws = Workspace(Path(workdir))
    cfg = audit_config(workdir)
    fingerprint = load_manifest(ws.shards)["fingerprint"]
    ref_dir = ensure_reference(cfg, ws, fingerprint, "rows", log=log)
    settings = ProbeSettings()
    rows = probe_rows(load_shard_rows(ws.shards, splits=SPLITS), settings)
    key = json.dumps(
        {
            "reference": tracking.weights_sha256(ref_dir),
            "shards": fingerprint,
            "settings": settings.as_dict(),
        },
        sort_keys=True,
    )
    cache = ws.root / "audit" / f"probe-reference-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cache.is_file():
        reference = json.loads(cache.read_text())
        log(f"[cached] the reference's audit probe ({cache})")
    else:
        from unlearn_core.models.loading import load_model_and_processor

        log(f"audit probe: the retrained reference {ref_dir.name} (once per reference and data)")
        model, processor = load_model_and_processor(str(ref_dir), cfg.model)
        reference = probe_figures(model, processor, rows, settings)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(reference))
    log(
        f"audit probe: reference relearn leak {reference['relearn_leak']:.3f} after {settings.steps} steps, "
        f"LOSS AUC {reference['auc']:.3f} (image level)"
    )
    return {"rows": rows, "settings": settings.as_dict(), "reference": reference}

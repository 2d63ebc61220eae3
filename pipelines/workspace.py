"""Where a run's inputs and outputs live, and the cached steps that produce them (records, shards)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unlearn_core.config import RunConfig


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"


SYNTH_STAMP = "synth.json"  # beside the generated records: the generator version and config they came from


def ensure_records(cfg: RunConfig, ws: Workspace, log=print) -> Path:
    """The records folder named in the config, else the synthetic benchmark (generated once per
    generator version and ``synth`` config: another config or version generates it again; records
    that some other command wrote into the workspace are used as they are)."""
    if cfg.records:
        return Path(cfg.records)
    from unlearn_core.data.synth import GENERATOR_VERSION

    stamp = json.dumps(
        {"version": GENERATOR_VERSION, "synth": cfg.synth.model_dump(mode="json")}, sort_keys=True
    )
    stamp_file = ws.records / SYNTH_STAMP
    if (ws.records / "records_meta.json").exists():
        # No stamp: records put there by hand (`unlearn data synth`/`convert --out`): they are kept.
        if not stamp_file.is_file() or stamp_file.read_text() == stamp:
            say_once(log, f"[cached] synthetic benchmark records in {ws.records}")
            return ws.records
        log(
            f"{ws.records} holds another synthetic benchmark (synth config or generator version): generating it again"
        )
    from unlearn_core.data.records_io import write_records
    from unlearn_core.data.synth import generate_benchmark

    log(f"generating the synthetic benchmark ({cfg.synth.people} people) -> {ws.records}")
    write_records(generate_benchmark(cfg.synth), ws.records, source="synthetic")
    stamp_file.write_text(stamp)
    return ws.records


def ensure_shards(cfg: RunConfig, ws: Workspace, log=print) -> Path:
    from pipelines.shards import shard_records

    if cfg.shards:
        return Path(cfg.shards)
    records = ensure_records(cfg, ws, log)
    spec = cfg.model.spec if not cfg.model.spec.startswith("models:/") else "tiny-llava"
    report = shard_records(
        records, ws.shards, model_spec=spec, model_cfg=cfg.model, image_size=cfg.synth.image_size
    )
    if report.skipped:  # one line, once per process: every job of a demo or sweep checks the shards
        say_once(log, f"[cached] shards {report.out_dir} (fingerprint {report.fingerprint[:16]} unchanged)")
    else:
        log(report.summary())
    return ws.shards


class NotCached(LookupError):
    """An input a job needs is not cached yet and the caller asked not to compute it here."""


_SAID: set[str] = set()


def say_once(log, message: str) -> None:
    """Log ``message`` once per process (cache hits are checked by every job of a demo or sweep)."""
    if message not in _SAID:
        _SAID.add(message)
        log(message)

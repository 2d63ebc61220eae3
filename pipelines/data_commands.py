"""The data subcommands of `unlearn` (`data synth|convert|validate|shard`, `score`): records and
shards in, reports out. The training and evaluation subcommands are in ``pipelines/commands.py``.

Every output goes through ``unlearn_core.outputs`` (checked before any work, built beside the target,
moved into place); these commands have no workdir, so their log file is in ``console.user_log_dir()``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines import preflight
from pipelines.commands import start
from pipelines.console import say
from unlearn_core import outputs
from unlearn_core.config import ConfigError, SynthConfig, validate
from unlearn_core.config import absolute_folder as _abs
from unlearn_core.config import local_model_spec as _spec


class NothingUsable(ConfigError):
    """The command read its input but nothing usable came out of it; nothing was written."""


def cmd_data_synth(args: argparse.Namespace) -> int:
    from unlearn_core.data.records_io import write_records
    from unlearn_core.data.synth import generate_benchmark

    cfg = validate(
        SynthConfig,
        {
            "people": args.people,
            "images_per_person": args.images_per_person,
            "unseen_per_person": args.unseen_per_person,
            "forget_pct": args.forget_pct,
            "utility_people": args.utility_people,
            "describe_images": args.describe_images,
            "image_size": args.image_size,
            "seed": args.seed,
        },
    )
    dest = outputs.check_folder(args.out, force=args.force)
    start(args, None, "data synth")
    records = generate_benchmark(cfg)
    with outputs.staged_folder(dest, "unlearn data synth", force=args.force) as stage:
        counts = write_records(records, stage, source="synthetic")
    say(f"wrote {counts['total']} records to {args.out} (quarantined {counts['quarantined']})")
    for split, info in counts["splits"].items():
        tasks = ", ".join(f"{t} {n}" for t, n in info["tasks"].items())
        say(f"  {split:<14} {info['total']:>6}  ({tasks})")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from unlearn_core.data.adapters import convert, get_converter

    get_converter(args.format)
    if not Path(args.source).is_dir():
        raise ConfigError(f"--source: {args.source} is not a folder (the data set as downloaded)")
    dest = outputs.check_folder(args.out, force=args.force)
    start(args, None, "data convert")
    with outputs.staged_folder(dest, "unlearn data convert", force=args.force) as stage:
        report = convert(args.format, Path(args.source), stage, forget_config=args.forget_config)
        report.out = str(args.out)
        if report.totals["written"] == 0:
            print(report.render(), file=sys.stderr)  # the whole table, into the log file
            raise NothingUsable(_nothing_converted(args.source, report))
    say(report.render())
    return 0


def _nothing_converted(source: str, report) -> str:
    read = report.totals["read"]
    if read == 0:
        return f"--source {source}: no records found in it; nothing was written"
    first = "; ".join(report.first_quarantined[:3])
    return (
        f"--source {source}: all {read} records were quarantined, nothing usable; nothing was written "
        f"(first: {first}; every reason in the log)"
    )


def cmd_data_validate(args: argparse.Namespace) -> int:
    from unlearn_core.data.validate import validate_records_dir

    preflight.records_folder(args.dir, "DIR")
    start(args, None, "data validate")
    report = validate_records_dir(Path(args.dir))
    say(report.render())
    if not report.ok:
        raise NothingUsable(f"DIR {args.dir}: {len(report.problems)} problem(s); first: {report.problems[0]}")
    return 0


def cmd_data_shard(args: argparse.Namespace) -> int:
    preflight.records_folder(args.records, "--records")
    preflight.model_spec(args.model, "--model", allow_registry=False)
    outputs.check_folder(
        args.out,
        force=args.force,
        reuse=preflight.SHARDS_WRITER,
        recognise=preflight.legacy_shards,
    )
    start(args, None, "data shard")
    from pipelines.ray_env import ensure_ray
    from pipelines.shards import shard_records

    report = shard_records(
        _abs(args.records),
        _abs(args.out),
        model_spec=_spec(args.model),
        image_size=args.image_size,
        seed=args.seed,
        force=args.force,
        replace=args.force,
        before_ray=ensure_ray,
    )
    say(report.summary())
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    preflight.records_folder(args.records, "--records")
    for field, path in (
        ("--predictions", args.predictions),
        ("--reference-predictions", args.reference_predictions),
    ):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{field}: {path} is not a file (JSON lines of predictions)")
    outputs.check_file(args.out, force=args.force)
    start(args, None, "score")
    from unlearn_core.eval.score import render_score, score_predictions

    report = score_predictions(
        args.records,
        args.predictions,
        protocol=args.protocol,
        reference_predictions=args.reference_predictions,
    )
    if report["n_scored"] == 0:
        print(render_score(report), file=sys.stderr)  # into the log file
        raise NothingUsable(_nothing_scored(args, report))
    outputs.write_json(args.out, report, "unlearn score", force=args.force)
    say(render_score(report))
    say(f"wrote {args.out}")
    return 0


def _nothing_scored(args: argparse.Namespace, report: dict) -> str:
    problems = report["problems"]
    unknown = problems["unknown_ids"]
    if unknown["count"]:
        return (
            f"--predictions {args.predictions}: none of its sample_ids is a record of --records {args.records} "
            f"({unknown['count']} unknown, e.g. {unknown['first'][0]!r}; records have e.g. "
            f"{problems['missing_ids']['first'][0]!r}); nothing was written"
        )
    bad = {k: v["count"] for k, v in problems.items() if v["count"] and k != "missing_ids"}
    detail = ", ".join(f"{k} {n}" for k, n in bad.items()) or "the file has no prediction lines"
    return f"--predictions {args.predictions}: no usable prediction ({detail}); nothing was written"

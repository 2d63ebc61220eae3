"""The data subcommands of `unlearn` (`data synth|convert|validate|shard`, `score`): records and
shards in, reports out. The training and evaluation subcommands are in ``pipelines/commands.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines import preflight
from pipelines.commands import start
from pipelines.console import say
from unlearn_core.config import ConfigError, SynthConfig, validate
from unlearn_core.config import absolute_folder as _abs
from unlearn_core.config import local_model_spec as _spec


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
    preflight.folder_writable(args.out, "--out")
    records = generate_benchmark(cfg)
    counts = write_records(records, Path(args.out), source="synthetic")
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
    preflight.folder_writable(args.out, "--out")
    report = convert(args.format, Path(args.source), Path(args.out), forget_config=args.forget_config)
    say(report.render())
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from unlearn_core.data.validate import validate_records_dir

    preflight.records_folder(args.dir, "DIR")
    report = validate_records_dir(Path(args.dir))
    say(report.render())
    return 0 if report.ok else 1


def cmd_data_shard(args: argparse.Namespace) -> int:
    preflight.records_folder(args.records, "--records")
    preflight.model_spec(args.model, "--model", allow_registry=False)
    preflight.folder_writable(args.out, "--out")
    start(args, Path(args.out).expanduser().resolve().parent, "data shard")
    from pipelines.ray_env import ensure_ray
    from pipelines.shards import shard_records

    ensure_ray()
    report = shard_records(
        _abs(args.records),
        _abs(args.out),
        model_spec=_spec(args.model),
        image_size=args.image_size,
        seed=args.seed,
        force=args.force,
    )
    say(report.summary())
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from unlearn_core.eval.score import render_score, score_predictions, write_score

    report = score_predictions(
        args.records,
        args.predictions,
        protocol=args.protocol,
        reference_predictions=args.reference_predictions,
    )
    write_score(report, args.out)
    say(render_score(report))
    say(f"wrote {args.out}")
    return 0

"""The `unlearn` command line. Thin: parse, validate, call one pipeline function, print a table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from unlearn_core.config import ConfigError, SynthConfig, validate
from unlearn_core.data.schema import RecordError

Handler = Callable[[argparse.Namespace], int]


def _cmd_data_synth(args: argparse.Namespace) -> int:
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
            "image_size": args.image_size,
            "seed": args.seed,
        },
    )
    records = generate_benchmark(cfg)
    counts = write_records(records, Path(args.out), source="synthetic")
    print(f"wrote {len(records)} records to {args.out}")
    _print_counts(counts)
    return 0


def _print_counts(counts: object) -> None:
    if isinstance(counts, dict):
        for k, v in counts.items():
            print(f"  {k}: {v}")
    else:
        print(f"  {counts}")


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from unlearn_core.data.adapters import convert

    report = convert(args.format, Path(args.source), Path(args.out))
    print(report.summary() if hasattr(report, "summary") else report)
    return 0


def _cmd_data_validate(args: argparse.Namespace) -> int:
    from unlearn_core.data.validate import validate_records_dir

    report = validate_records_dir(Path(args.dir))
    print(report.summary() if hasattr(report, "summary") else report)
    return 0 if getattr(report, "ok", True) else 1


def _cmd_data_shard(args: argparse.Namespace) -> int:
    from pipelines.preprocess import shard_records
    from pipelines.ray_env import ensure_ray

    ensure_ray()
    report = shard_records(
        args.records, args.out, model_spec=args.model, image_size=args.image_size, seed=args.seed, force=args.force
    )
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearn",
        description="Machine unlearning for vision-language models on Ray and MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="build, convert, validate and shard data sets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = dsub.add_parser("synth", help="generate the synthetic identity benchmark as canonical records")
    p.add_argument("--out", required=True, help="records folder to write")
    p.add_argument("--people", type=int, default=40, help="forget + retain people (default 40)")
    p.add_argument("--images-per-person", type=int, default=6, help="training images per person (default 6)")
    p.add_argument("--unseen-per-person", type=int, default=2, help="held-out images per person (default 2)")
    p.add_argument("--forget-pct", type=float, default=10.0, help="share of people to forget, in %% (default 10)")
    p.add_argument("--utility-people", type=int, default=8, help="extra people for the utility split (default 8)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_data_synth)

    p = dsub.add_parser("convert", help="convert a downloaded benchmark (MLLMU-Bench, CLEAR, JSONL) to records")
    p.add_argument("--format", required=True, help="mllmu-bench, clear or jsonl")
    p.add_argument("--source", required=True, help="data set folder as downloaded (one subfolder per config)")
    p.add_argument("--out", required=True, help="records folder to write")
    p.set_defaults(handler=_cmd_data_convert)

    p = dsub.add_parser("validate", help="check a records folder: schema, images, duplicates, split overlap")
    p.add_argument("dir", help="records folder")
    p.set_defaults(handler=_cmd_data_validate)

    p = dsub.add_parser("shard", help="tokenize records into Parquet shards with Ray Data")
    p.add_argument("--records", required=True, help="records folder")
    p.add_argument("--model", required=True, help="model SPEC: HF id, local folder, or tiny-llava")
    p.add_argument("--out", required=True, help="shards folder to write")
    p.add_argument("--image-size", type=int, default=64, help="resize images to this side (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the fingerprint is unchanged")
    p.set_defaults(handler=_cmd_data_shard)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (ConfigError, RecordError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

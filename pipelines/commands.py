"""What each `unlearn` subcommand does once its arguments are parsed: build and validate the config,
call one pipeline function, print the outcome. The parser is in ``pipelines/cli.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

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
            "image_size": args.image_size,
            "seed": args.seed,
        },
    )
    records = generate_benchmark(cfg)
    counts = write_records(records, Path(args.out), source="synthetic")
    print(f"wrote {counts['total']} records to {args.out} (quarantined {counts['quarantined']})")
    for split, info in counts["splits"].items():
        tasks = ", ".join(f"{t} {n}" for t, n in info["tasks"].items())
        print(f"  {split:<14} {info['total']:>6}  ({tasks})")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from unlearn_core.data.adapters import convert

    report = convert(args.format, Path(args.source), Path(args.out), forget_config=args.forget_config)
    print(report.render())
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from unlearn_core.data.validate import validate_records_dir

    report = validate_records_dir(Path(args.dir))
    print(report.render())
    return 0 if report.ok else 1


def cmd_data_shard(args: argparse.Namespace) -> int:
    from pipelines.ray_env import ensure_ray
    from pipelines.shards import shard_records

    ensure_ray()
    report = shard_records(
        _abs(args.records), _abs(args.out), model_spec=_spec(args.model), image_size=args.image_size, seed=args.seed,
        force=args.force
    )
    print(report.summary())
    return 0


def run_config_from_args(args: argparse.Namespace, command: str):
    """The command's default config file (or --config), then --preset, then flags, then --set (last wins).

    Method parameters default to the method's own (``unlearn_core.methods``): no second set of defaults here.
    """
    from pipelines.cluster_presets import preset_overrides
    from pipelines.defaults import default_config
    from unlearn_core.config import load_run_config

    overrides = preset_overrides(args.preset) if getattr(args, "preset", None) else {}
    if getattr(args, "workdir", None):
        overrides["workdir"] = args.workdir
    for field, attr in (("model.spec", "model"), ("train.steps", "steps"), ("train.num_workers", "workers")):
        if getattr(args, attr, None) is not None:
            overrides[field] = getattr(args, attr)
    overrides.update(_parse_set(x) for x in (getattr(args, "set", None) or []))
    return load_run_config(getattr(args, "config", None) or default_config(command), overrides)


def _parse_set(item: str) -> tuple[str, object]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def cmd_finetune(args: argparse.Namespace) -> int:
    from pipelines.ray_env import ensure_ray
    from pipelines.train.finetune import run_finetune

    cfg = run_config_from_args(args, "finetune")
    ensure_ray()
    run_finetune(cfg, out_name=args.name)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.ray_env import ensure_ray
    from pipelines.train.unlearn import run_unlearn

    if args.method:
        args.set = [*(args.set or []), f"method.name={args.method}"]
    cfg = run_config_from_args(args, "unlearn")
    ensure_ray()
    run_unlearn(cfg)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.ray_env import ensure_ray
    from pipelines.sweep import run_sweep
    from pipelines.sweep.champion import ChampionRule

    if not args.space and not args.resume:
        raise ConfigError("unlearn sweep needs --space FILE (or --resume DIR)")
    cfg = run_config_from_args(args, "unlearn")  # the same starting config as `unlearn run` and the demo
    rule = ChampionRule(max_leak=args.max_leak, min_retain_ratio=args.min_retain_ratio, fallback=args.champion_fallback)
    ensure_ray()
    out = run_sweep(
        args.space or "", cfg, num_samples=args.num_samples, scheduler=args.scheduler, search=args.search,
        max_concurrent=args.max_concurrent, workers_per_trial=args.workers_per_trial, resume_dir=args.resume,
        champion_rule=rule,
    )
    champ = out["champion"]
    print(f"sweep folder: {out['sweep_dir']} (resume with --resume {out['sweep_dir']})")
    print(f"MLflow parent run: {out['parent_run_id']}; report: {', '.join(out['artifacts'])}")
    print(f"champion: {champ['trial']} -> {champ['uri']}" if champ["trial"] else f"no champion: {champ['reason']}")
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    import json

    from pipelines.ray_env import ensure_ray
    from pipelines.train.mask import mask_job

    ensure_ray()
    stats = mask_job(_spec(args.model), _abs(args.shards), _abs(args.out), modules=args.modules, gamma=args.gamma, lora=args.lora,
                     tracking_uri=args.tracking_uri, workdir=args.workdir)
    print(json.dumps(stats, indent=1))
    print(f"logged to MLflow run {stats['mlflow_run_id']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import BASELINES, run_demo
    from pipelines.ray_env import ensure_ray

    methods = tuple(m for m in args.methods.split(",") if m) if args.methods is not None else BASELINES
    ensure_ray()
    run_demo(args.workdir, methods=methods, method_steps=args.method_steps, sweep_samples=args.sweep_samples)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from pipelines import tracking
    from pipelines.evaluate import evaluate
    from pipelines.ray_env import ensure_ray
    from unlearn_core.config import TrackingConfig
    from unlearn_core.eval.report import format_table

    ensure_ray()
    model = _spec(args.model)
    if model.startswith("models:/"):
        uri = tracking.resolve_tracking_uri(TrackingConfig(), args.workdir)
        model = str(tracking.pull(model, Path(args.workdir) / "pulled" / "eval-model", tracking_uri=uri))
    judge = None
    if args.judge_url:
        from unlearn_core.eval.judge import JudgeConfig

        if not args.judge_model:
            raise ConfigError("--judge-url needs --judge-model (the model name the endpoint serves)")
        judge = JudgeConfig(base_url=args.judge_url, model=args.judge_model, api_key_env=args.judge_key_env or None,
                            max_samples=args.judge_max_samples)
    report = evaluate(model, _abs(args.shards), max_per_group=args.max_per_group, judge=judge,
                      protocol=args.protocol, reference_report=args.reference_report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(format_table({Path(args.model).name or args.model: report["metrics"]}))
    print(f"wrote {args.out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from unlearn_core.eval.score import render_score, score_predictions, write_score

    report = score_predictions(args.records, args.predictions, protocol=args.protocol,
                               reference_predictions=args.reference_predictions)
    write_score(report, args.out)
    print(render_score(report))
    print(f"wrote {args.out}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from pipelines import tracking
    from unlearn_core.config import TrackingConfig

    uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri), args.workdir)
    out = tracking.pull(args.uri, args.out, tracking_uri=uri)
    print(f"pulled {args.uri} -> {out} (weights sha256 verified)")
    return 0

"""What each `unlearn` subcommand does once its arguments are parsed: build and validate the config,
call one pipeline function, print the outcome. The parser is in ``pipelines/cli.py``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import console, preflight
from pipelines.console import say
from unlearn_core.config import ConfigError
from unlearn_core.config import absolute_folder as _abs
from unlearn_core.config import local_model_spec as _spec

if TYPE_CHECKING:
    from pipelines.train.driver import JobResult
    from unlearn_core.config import RunConfig


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
    path = getattr(args, "config", None) or default_config(command)
    import yaml

    try:
        return load_run_config(path, overrides)
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from None


def _parse_set(item: str) -> tuple[str, object]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"--set {item!r}: the value is not valid YAML ({err.__class__.__name__}); "
            "quote it, e.g. --set 'key=\"text\"'"
        ) from None


def cmd_finetune(args: argparse.Namespace) -> int:
    cfg = run_config_from_args(args, "finetune")
    preflight.run_config(cfg, "finetune")
    start(args, cfg.workdir, "finetune")
    from pipelines.ray_env import ensure_ray
    from pipelines.train.finetune import run_finetune

    ensure_ray()
    name = args.name or "vanilla"
    if args.exclude_forget and not args.name:  # the keyed name `unlearn audit` looks for
        from pipelines.audit import reference_name
        from pipelines.shards import load_manifest
        from pipelines.workspace import Workspace, ensure_shards

        shards = ensure_shards(cfg, Workspace(Path(cfg.workdir)), say)
        name = reference_name(cfg, load_manifest(shards)["fingerprint"], args.exclude_forget)
    artifacts(run_finetune(cfg, out_name=name, log=say, exclude_forget=args.exclude_forget), cfg)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.method:
        args.set = [*(args.set or []), f"method.name={args.method}"]
    cfg = run_config_from_args(args, "unlearn")
    preflight.run_config(cfg, "run")
    start(args, cfg.workdir, "run")
    from pipelines.ray_env import ensure_ray
    from pipelines.train.unlearn import run_unlearn

    ensure_ray()
    artifacts(run_unlearn(cfg, log=say), cfg)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if not args.space and not args.resume:
        raise ConfigError("unlearn sweep needs --space FILE (or --resume DIR)")
    cfg = run_config_from_args(args, "unlearn")  # the same starting config as `unlearn run` and the demo
    options = {
        "scheduler": args.scheduler,
        "search": args.search,
        "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent,
        "workers_per_trial": args.workers_per_trial,
    }
    preflight.sweep(cfg, args.space, resume=args.resume, **options)
    from pipelines.sweep.champion import ChampionRule

    rule = ChampionRule(
        max_leak=args.max_leak, min_retain_ratio=args.min_retain_ratio, fallback=args.champion_fallback
    )
    if args.audit:
        preflight.shards_folder(Path(cfg.workdir) / "shards", "--audit (the workdir's shards)")
    start(args, cfg.workdir, "sweep")
    from pipelines.ray_env import ensure_ray
    from pipelines.sweep import run_sweep

    ensure_ray()
    out = run_sweep(
        args.space or "",
        cfg,
        **options,
        resume_dir=args.resume,
        champion_rule=rule,
        audit=args.audit,
        log=say,
    )
    champ = out.champion
    say(f"sweep folder: {out.sweep_dir} (resume with --resume {out.sweep_dir})")
    say(f"MLflow parent run: {out.parent_run_id}; report: {', '.join(out.artifacts)}")
    say(f"champion: {champ.trial} -> {champ.uri}" if champ.trial else f"no champion: {champ.reason}")
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    import json

    preflight.model_folder(args.model, "--model")
    preflight.shards_folder(args.shards, "--shards")
    if not args.out.endswith(".safetensors"):
        raise ConfigError(f"--out: {args.out!r} must end with .safetensors (the mask file)")
    if args.gamma <= 0:
        raise ConfigError(f"--gamma: must be > 0, got {args.gamma}")
    preflight.folder_writable(Path(args.out).parent, "--out")
    start(args, args.workdir, "mask")
    from pipelines.ray_env import ensure_ray
    from pipelines.train.mask import mask_job

    ensure_ray()
    stats = mask_job(
        _spec(args.model),
        _abs(args.shards),
        _abs(args.out),
        modules=args.modules,
        gamma=args.gamma,
        lora=args.lora,
        tracking_uri=args.tracking_uri,
        workdir=args.workdir,
    )
    say(json.dumps(stats, indent=1))
    say(f"logged to MLflow run {stats['mlflow_run_id']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    methods = tuple(m for m in args.methods.split(",") if m) if args.methods is not None else None
    if methods is not None:
        preflight.method_names(methods, "--methods")
    if args.method_steps < 1:
        raise ConfigError(f"--method-steps: must be >= 1, got {args.method_steps}")
    if args.sweep_samples < 0:
        raise ConfigError(f"--sweep-samples: must be >= 0 (0 = no sweep), got {args.sweep_samples}")
    preflight.folder_writable(args.workdir, "--workdir")
    start(args, args.workdir, "demo")
    from pipelines.demo import BASELINES, run_demo
    from pipelines.ray_env import ensure_ray

    ensure_ray()
    run_demo(
        args.workdir,
        methods=methods or BASELINES,
        method_steps=args.method_steps,
        sweep_samples=args.sweep_samples,
        audit=not args.no_audit,
        log=say,
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    preflight.model_spec(args.model, "--model", allow_hub=False)
    preflight.shards_folder(args.shards, "--shards")
    preflight.folder_writable(Path(args.out).parent, "--out")
    if args.judge_url and not args.judge_model:
        raise ConfigError("--judge-url needs --judge-model (the model name the endpoint serves)")
    start(args, args.workdir, "eval")
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

        judge = JudgeConfig(
            base_url=args.judge_url,
            model=args.judge_model,
            api_key_env=args.judge_key_env or None,
            max_samples=args.judge_max_samples,
        )
    report = evaluate(
        model,
        _abs(args.shards),
        max_per_group=args.max_per_group,
        judge=judge,
        protocol=args.protocol,
        reference_report=args.reference_report,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    say(format_table({Path(args.model).name or args.model: report["metrics"]}))
    say(f"wrote {args.out}")
    if args.track:
        _track_eval(args, report, model)
    return 0


def _track_eval(args: argparse.Namespace, report: dict, model: str) -> None:
    """``--track``: the evaluation as its own MLflow run, in the store and experiment `unlearn run` uses
    with its default config (tracking_uri: $MLFLOW_TRACKING_URI, else <workdir>/mlflow.db)."""
    from pipelines import tracking
    from unlearn_core.config import TrackingConfig

    cfg = TrackingConfig()
    uri = tracking.resolve_tracking_uri(cfg, args.workdir)
    params = {
        "model": args.model,
        "model_dir": model,
        "shards": str(_abs(args.shards)),
        "protocol": report["protocol"],
        "max_per_group": args.max_per_group,
        "n_rows": report["n_rows"],
    }
    run_id = tracking.log_evaluation(
        report, args.out, tracking=cfg, tracking_uri=uri, workdir=args.workdir, params=params
    )
    say(f"MLflow:   run {run_id} (experiment {cfg.experiment}) in {uri}")


def cmd_pull(args: argparse.Namespace) -> int:
    preflight.registry_uri(args.uri, "URI")
    preflight.folder_writable(args.out, "--out")
    from pipelines import tracking
    from unlearn_core.config import TrackingConfig

    uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri), args.workdir)
    out = tracking.pull(args.uri, args.out, tracking_uri=uri)
    say(f"pulled {args.uri} -> {out} (weights sha256 verified)")
    say(tracking.audit_verdict_line(args.uri, tracking_uri=uri, workdir=args.workdir))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from unlearn_core.audit.side import CHECKS

    preflight.model_spec(args.model, "--model", allow_hub=False)
    shards = preflight.shards_folder(Path(args.workdir) / "shards", "--workdir (its shards)")
    checks = tuple(c.strip() for c in (args.checks or ",".join(CHECKS)).split(",") if c.strip())
    if bad := [c for c in checks if c not in CHECKS]:
        raise ConfigError(f"--checks: unknown check(s) {bad}; valid: {', '.join(CHECKS)}")
    from pipelines.audit.match import check_model_matches
    from pipelines.audit.reference import audit_config

    cfg = audit_config(args.workdir, dict(_parse_set(x) for x in (args.set or [])))
    model = args.model
    if not model.startswith("models:/"):  # refused before any work; a registry model after its download
        check_model_matches(model, shards, check_data=not args.skip_data_check)
    start(args, args.workdir, "audit")
    from pipelines import tracking
    from pipelines.audit import run_audit
    from unlearn_core.audit import AttackSettings

    if model.startswith("models:/"):
        uri = tracking.resolve_tracking_uri(cfg.tracking, args.workdir)
        safe = model[len("models:/") :].replace("/", "_").replace("@", "_")
        model = str(tracking.pull(model, Path(args.workdir) / "pulled" / safe, tracking_uri=uri))
        say(f"pulled {args.model} -> {model}")
        check_model_matches(model, shards, check_data=not args.skip_data_check)
    report = run_audit(
        model,
        cfg,
        exclude=args.reference_excludes,
        settings=AttackSettings(checks=checks),
        check_data=not args.skip_data_check,
        track=not args.no_track,
        log=say,
    )
    if report.get("run_id"):
        say(
            f"MLflow:   audit run {report['run_id']} in {tracking.resolve_tracking_uri(cfg.tracking, args.workdir)}"
        )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipelines.doctor import report

    say(report(args.workdir))
    return 0


def artifacts(out: JobResult, cfg: RunConfig) -> None:
    """Where a training job's results are: the model folder, the MLflow run and store, the registry."""
    from pipelines import tracking

    say(f"model:    {out.model_dir}")
    say(f"MLflow:   run {out.run_id} in {tracking.resolve_tracking_uri(cfg.tracking, cfg.workdir)}")
    registered = out.registered_model
    if out.version and registered:
        ref = f"models:/{registered}/{out.version}"
        say(f"registry: {ref} (`unlearn pull {ref} --out DIR`)")


def start(args: argparse.Namespace, workdir: str | Path, command: str) -> None:
    """After validation, before Ray: the cluster address, the console and (unless --verbose) the log file."""
    preflight.ray_address()
    console.start(workdir, command, verbose=bool(getattr(args, "verbose", False)))

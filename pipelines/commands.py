"""What each `unlearn` subcommand does once its arguments are parsed: build and validate the config,
call one pipeline function, print the outcome. The parser is in ``pipelines/cli.py``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import console, preflight
from pipelines.console import say
from unlearn_core import outputs
from unlearn_core.config import ConfigError
from unlearn_core.config import absolute_folder as _abs
from unlearn_core.config import local_model_spec as _spec

if TYPE_CHECKING:
    from pipelines.train.driver import JobResult
    from unlearn_core.config import RunConfig


def run_config_from_args(args: argparse.Namespace, command: str):
    """The command's default config file (or --config), then the method's own trainer defaults, then
    --preset, then flags, then --set (last wins).

    Method parameters default to the method's own (``unlearn_core.methods``): no second set of defaults
    here. A method whose defaults were measured with another step budget or learning rate than the
    starting config's declares them (``Params.train_defaults``, docs/methods.md); they apply to the
    project's starting config only, never over a ``--config`` file. A sweep's method is its space's.
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
    if getattr(args, "method", None):
        overrides["method.name"] = args.method
    overrides.update(_parse_set(x) for x in (getattr(args, "set", None) or []))
    path = getattr(args, "config", None) or default_config(command)
    import yaml

    try:
        cfg = load_run_config(path, overrides)
        if command != "unlearn" or getattr(args, "config", None):
            return cfg
        from unlearn_core.method_registry import train_defaults

        own = train_defaults(_space_method(getattr(args, "space", None)) or cfg.method.name)
        return load_run_config(path, {**own, **overrides}) if own else cfg
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from None


def _space_method(space: str | None) -> str | None:
    """The method a sweep space file names (None: no file, or one preflight will refuse)."""
    if not space:
        return None
    try:
        from unlearn_core.search_space import load_space

        return load_space(space).method
    except ConfigError:
        return None


def _parse_set(item: str) -> tuple[str, object]:
    import yaml

    from unlearn_core.bounded import load_yaml

    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), load_yaml(raw, f"--set {key.strip()}")
    except yaml.YAMLError as err:
        raise ConfigError(
            f"--set {item!r}: the value is not valid YAML ({err.__class__.__name__}); "
            "quote it, e.g. --set 'key=\"text\"'"
        ) from None


def cmd_finetune(args: argparse.Namespace) -> int:
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*", args.name):
        raise ConfigError(f"--name: {args.name!r} must be a plain folder name (letters, digits, . _ -)")
    cfg = run_config_from_args(args, "finetune")
    preflight.run_config(cfg, "finetune")
    keyed = args.exclude_forget and not args.name  # the reference's name comes from the shards (below)
    name = args.name or "vanilla"
    if not keyed:  # a model folder is replaced only if a training job wrote it
        outputs.check_folder(
            Path(cfg.workdir) / "models" / name, "--name", force=True, recognise=preflight.earlier_model
        )
    start(args, cfg.workdir, "finetune")
    from pipelines.ray_env import ensure_ray
    from pipelines.train.finetune import run_finetune

    ensure_ray()
    if keyed:  # the keyed name `unlearn audit` looks for
        from pipelines.audit import reference_name
        from pipelines.shards import load_manifest
        from pipelines.workspace import Workspace, ensure_shards

        shards = ensure_shards(cfg, Workspace(Path(cfg.workdir)), say)
        name = reference_name(cfg, load_manifest(shards)["fingerprint"], args.exclude_forget)
        outputs.check_folder(
            Path(cfg.workdir) / "models" / name, "--name", force=True, recognise=preflight.earlier_model
        )
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
        "max_failures": args.max_failures,
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
    if not args.gamma > 0:
        raise ConfigError(f"--gamma: must be a number > 0, got {args.gamma}")
    for path in (Path(args.out), Path(args.out).with_suffix(".json")):
        outputs.check_file(path, force=args.force)
    preflight.tracking(args.tracking_uri, args.workdir, "--tracking-uri")
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
        force=args.force,
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
    preflight.tracking(None, args.workdir, "MLFLOW_TRACKING_URI")
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
    preflight.model_spec(args.model, "--model", allow_hub=False)
    preflight.shards_folder(args.shards, "--shards")
    outputs.check_file(args.out, force=args.force)
    for field, value in (
        ("--max-per-group", args.max_per_group),
        ("--judge-max-samples", args.judge_max_samples),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{field}: must be >= 1, got {value}")
    if args.reference_report:
        preflight.json_report(args.reference_report, "--reference-report")
    if args.judge_url:
        if not args.judge_model:
            raise ConfigError("--judge-url needs --judge-model (the model name the endpoint serves)")
        from pipelines.services import check_judge

        check_judge(args.judge_url, args.judge_key_env or None)
    if args.clip_model:
        preflight.model_spec(args.clip_model, "--clip-model", allow_registry=False)
    if args.track or args.model.startswith("models:/"):
        preflight.tracking(None, args.workdir, "MLFLOW_TRACKING_URI")
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
        pulled = Path(args.workdir) / "pulled" / "eval-model"  # the workdir's own: replaced each time
        model = str(tracking.pull(model, pulled, tracking_uri=uri, force=True))
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
        clip_model=args.clip_model,
        zero_shot=args.zero_shot,
    )
    outputs.write_json(args.out, report, "unlearn eval", force=args.force)
    say(format_table({Path(args.model).name or args.model: report["metrics"]}))
    if "few_shot" in report:
        shots = report["few_shot"]
        people = sorted({p for plan in shots["plans"].values() for p in plan["people"]})
        say(
            f"MLLMU-Bench few-shot prompts (seed {shots['seed']}): examples from {', '.join(people)}; "
            f"their own {shots['skipped_rows']} questions not evaluated (the draws: 'few_shot' in "
            f"{args.out}; --zero-shot for none)"
        )
    say(f"wrote {args.out}")
    if args.track:
        _track_eval(args, report, model)
    failed = report.get("judge", {}).get("error")
    if failed:
        term = console.active()
        message = (
            f"judge failed: {failed}; the other metrics are in {args.out}, the judge.* scores are missing"
        )
        (term.error if term is not None else print)(f"error: {message}")
        return 1
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
    outputs.check_folder(args.out, force=args.force)
    uri = preflight.tracking(args.tracking_uri, args.workdir, "--tracking-uri")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise ConfigError(
            f"--tracking-uri: no MLflow store at {uri[len('sqlite:///') :]} (nothing registered there); "
            "pass --workdir of the runs or --tracking-uri of their server"
        )
    start(args, args.workdir, "pull")
    from pipelines import tracking

    out = tracking.pull(args.uri, args.out, tracking_uri=uri, force=args.force)
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


def cmd_relocate(args: argparse.Namespace) -> int:
    """Point a copied or moved workdir's MLflow store at its own artifact folder."""
    from pipelines.store_paths import ARTIFACTS, relocate

    db = Path(args.workdir).expanduser() / "mlflow.db"
    if not db.is_file():
        raise ConfigError(f"--workdir {args.workdir}: no MLflow store there ({db} does not exist)")
    changed = relocate(db)
    if not changed:
        say(f"{db}: every artifact location is already in {db.resolve().parent / ARTIFACTS}; nothing to do")
        return 0
    say(f"{db}: artifact locations now in {db.resolve().parent / ARTIFACTS}")
    for column, n in changed.items():
        say(f"  {column}: {n} rewritten")
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


def start(args: argparse.Namespace, workdir: str | Path | None, command: str) -> None:
    """After validation, before Ray: the cluster address, the console and (unless --verbose) the log
    file, in ``WORKDIR/logs`` (a command without a workdir: ``console.user_log_dir()``)."""
    preflight.ray_address()
    console.start(workdir, command, verbose=bool(getattr(args, "verbose", False)))

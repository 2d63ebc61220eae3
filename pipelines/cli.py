"""The `unlearn` command line. Thin: parse, validate, call one pipeline function, print a table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipelines import console, preflight
from pipelines.console import say
from unlearn_core.config import ConfigError, SynthConfig, validate
from unlearn_core.config import absolute_folder as _abs
from unlearn_core.config import local_model_spec as _spec
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
    preflight.folder_writable(args.out, "--out")
    records = generate_benchmark(cfg)
    counts = write_records(records, Path(args.out), source="synthetic")
    say(f"wrote {counts['total']} records to {args.out} (quarantined {counts['quarantined']})")
    for split, info in counts["splits"].items():
        tasks = ", ".join(f"{t} {n}" for t, n in info["tasks"].items())
        say(f"  {split:<14} {info['total']:>6}  ({tasks})")
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from unlearn_core.data.adapters import convert, get_converter

    get_converter(args.format)
    if not Path(args.source).is_dir():
        raise ConfigError(f"--source: {args.source} is not a folder (the data set as downloaded)")
    preflight.folder_writable(args.out, "--out")
    report = convert(args.format, Path(args.source), Path(args.out), forget_config=args.forget_config)
    say(report.render())
    return 0


def _cmd_data_validate(args: argparse.Namespace) -> int:
    from unlearn_core.data.validate import validate_records_dir

    preflight.records_folder(args.dir, "DIR")
    report = validate_records_dir(Path(args.dir))
    say(report.render())
    return 0 if report.ok else 1


def _cmd_data_shard(args: argparse.Namespace) -> int:
    preflight.records_folder(args.records, "--records")
    preflight.model_spec(args.model, "--model", allow_registry=False)
    preflight.folder_writable(args.out, "--out")
    _start(args, Path(args.out).expanduser().resolve().parent, "data shard")
    from pipelines.preprocess import shard_records
    from pipelines.ray_env import ensure_ray

    ensure_ray()
    report = shard_records(
        _abs(args.records), _abs(args.out), model_spec=_spec(args.model), image_size=args.image_size, seed=args.seed,
        force=args.force
    )
    say(report.summary())
    return 0


def _run_config(args: argparse.Namespace, command: str | None = None):
    """Config file (or the command's default), then method defaults, then flags and --set."""
    from pipelines.defaults import default_config, method_defaults
    from unlearn_core.config import load_run_config

    user = dict(_parse_set(x) for x in (getattr(args, "set", None) or []))
    method = user.get("method.name")
    overrides = {**(method_defaults(str(method)) if method and not args.config else {}), **user}
    if getattr(args, "workdir", None):
        overrides["workdir"] = args.workdir
    for field, attr in (("model.spec", "model"), ("train.steps", "steps"), ("train.num_workers", "workers")):
        if getattr(args, attr, None) is not None:
            overrides[field] = getattr(args, attr)
    path = getattr(args, "config", None) or (default_config(command) if command else None)
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
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err.__class__.__name__}); "
                          "quote it, e.g. --set 'key=\"text\"'") from None


def _cmd_finetune(args: argparse.Namespace) -> int:
    cfg = _run_config(args, "finetune")
    preflight.run_config(cfg, "finetune")
    _start(args, cfg.workdir, "finetune")
    from pipelines.finetune import run_finetune
    from pipelines.ray_env import ensure_ray

    ensure_ray()
    _artifacts(run_finetune(cfg, out_name=args.name, log=say), cfg)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.method:
        args.set = [*(args.set or []), f"method.name={args.method}"]
    cfg = _run_config(args, "unlearn")
    preflight.run_config(cfg, "run")
    _start(args, cfg.workdir, "run")
    from pipelines.ray_env import ensure_ray
    from pipelines.unlearn import run_unlearn

    ensure_ray()
    _artifacts(run_unlearn(cfg, log=say), cfg)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    cfg = _run_config(args)
    preflight.sweep(cfg, args.space, resume=args.resume, scheduler=args.scheduler, search=args.search,
                    num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                    workers_per_trial=args.workers_per_trial)
    from pipelines.champion import ChampionRule

    rule = ChampionRule(max_leak=args.max_leak, min_retain_ratio=args.min_retain_ratio, fallback=args.champion_fallback)
    _start(args, cfg.workdir, "sweep")
    from pipelines.ray_env import ensure_ray
    from pipelines.sweep import run_sweep

    ensure_ray()
    out = run_sweep(
        args.space or "", cfg, num_samples=args.num_samples, scheduler=args.scheduler, search=args.search,
        max_concurrent=args.max_concurrent, workers_per_trial=args.workers_per_trial, resume_dir=args.resume,
        champion_rule=rule, log=say,
    )
    champ = out["champion"]
    say(f"sweep folder: {out['sweep_dir']} (resume with --resume {out['sweep_dir']})")
    say(f"MLflow parent run: {out['parent_run_id']}; report: {', '.join(out['artifacts'])}")
    say(f"champion: {champ['trial']} -> {champ['uri']}" if champ["trial"] else f"no champion: {champ['reason']}")
    return 0


def _cmd_mask(args: argparse.Namespace) -> int:
    import json

    preflight.model_folder(args.model, "--model")
    preflight.shards_folder(args.records, "--records")
    if not args.out.endswith(".safetensors"):
        raise ConfigError(f"--out: {args.out!r} must end with .safetensors (the mask file)")
    if args.gamma <= 0:
        raise ConfigError(f"--gamma: must be > 0, got {args.gamma}")
    preflight.folder_writable(Path(args.out).parent, "--out")
    _start(args, args.workdir, "mask")
    from pipelines.mask import mask_job
    from pipelines.ray_env import ensure_ray

    ensure_ray()
    stats = mask_job(_spec(args.model), _abs(args.records), _abs(args.out), modules=args.modules, gamma=args.gamma, lora=args.lora,
                     tracking_uri=args.tracking_uri, workdir=args.workdir)
    say(json.dumps(stats, indent=1))
    say(f"logged to MLflow run {stats['mlflow_run_id']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    methods = tuple(m for m in args.methods.split(",") if m) if args.methods is not None else None
    if methods is not None:
        preflight.method_names(methods, "--methods")
    if args.method_steps < 1:
        raise ConfigError(f"--method-steps: must be >= 1, got {args.method_steps}")
    if args.sweep_samples < 0:
        raise ConfigError(f"--sweep-samples: must be >= 0 (0 = no sweep), got {args.sweep_samples}")
    preflight.folder_writable(args.workdir, "--workdir")
    _start(args, args.workdir, "demo")
    from pipelines.demo import BASELINES, run_demo
    from pipelines.ray_env import ensure_ray

    ensure_ray()
    run_demo(args.workdir, methods=methods or BASELINES, method_steps=args.method_steps, sweep_samples=args.sweep_samples,
             log=say)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    preflight.model_spec(args.model, "--model", allow_hub=False)
    preflight.shards_folder(args.records, "--records")
    preflight.folder_writable(Path(args.out).parent, "--out")
    if args.judge_url and not args.judge_model:
        raise ConfigError("--judge-url needs --judge-model (the model name the endpoint serves)")
    _start(args, args.workdir, "eval")
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

        judge = JudgeConfig(base_url=args.judge_url, model=args.judge_model, api_key_env=args.judge_key_env or None,
                            max_samples=args.judge_max_samples)
    report = evaluate(model, _abs(args.records), max_per_group=args.max_per_group, judge=judge)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    say(format_table({Path(args.model).name or args.model: report["metrics"]}))
    say(f"wrote {args.out}")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    preflight.registry_uri(args.uri, "URI")
    preflight.folder_writable(args.out, "--out")
    from pipelines import tracking
    from unlearn_core.config import TrackingConfig

    uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri), args.workdir)
    out = tracking.pull(args.uri, args.out, tracking_uri=uri)
    say(f"pulled {args.uri} -> {out} (weights sha256 verified)")
    return 0


def _artifacts(out: dict, cfg) -> None:
    """Where a training job's results are: the model folder, the MLflow run and store, the registry."""
    from pipelines import tracking

    say(f"model:    {out['model_dir']}")
    say(f"MLflow:   run {out['run_id']} in {tracking.resolve_tracking_uri(cfg.tracking, cfg.workdir)}")
    registered = out.get("registered_model")
    if out.get("version") and registered:
        say(f"registry: models:/{registered}/{out['version']} (`unlearn pull models:/{registered}/{out['version']} --out DIR`)")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pipelines.doctor import report

    say(report(args.workdir))
    return 0


def _start(args: argparse.Namespace, workdir: str | Path, command: str) -> None:
    """After validation, before Ray: the cluster address, the console and (unless --verbose) the log file."""
    preflight.ray_address()
    console.start(workdir, command, verbose=bool(getattr(args, "verbose", False)))


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (see README: config reference)")
    p.add_argument("--workdir", default=None, help="working folder for records, shards, models, mlflow.db")
    p.add_argument("--model", default=None, help="model SPEC (overrides model.spec)")
    p.add_argument("--steps", type=int, default=None, help="overrides train.steps")
    p.add_argument("--workers", type=int, default=None, help="overrides train.num_workers")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field, dotted (train.lr=1e-4)")


def _method_names() -> str:
    from unlearn_core.methods import METHODS

    return ", ".join(sorted(METHODS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearn",
        description="Machine unlearning for vision-language models on Ray and MLflow.",
    )
    from pipelines.doctor import version

    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
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
    p.add_argument(
        "--forget-config", default=None, help="which forget config to use (mllmu-bench: forget_5; clear: forget10)"
    )
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

    p = sub.add_parser("finetune", help="fine-tune the vanilla model on the forget + retain splits (Ray Train)")
    _add_run_options(p)
    p.add_argument("--name", default="vanilla", help="model name under WORKDIR/models (default vanilla)")
    p.set_defaults(handler=_cmd_finetune)

    p = sub.add_parser("run", help="one unlearning job (Ray Train): eval before/after, MLflow, registry")
    _add_run_options(p)
    p.add_argument("--method", default=None, help="method name (overrides method.name): " + _method_names())
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("sweep", help="Ray Tune sweep over a search space (tune_spaces/*.yaml); registers the champion")
    _add_run_options(p)
    p.add_argument("--space", default=None, help="search space YAML, e.g. tune_spaces/pubg.yaml (not with --resume)")
    p.add_argument("--num-samples", type=int, default=None, help="trials (default: the space's num_samples)")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha", help="ASHA early stopping (default) or none")
    p.add_argument("--search", choices=["random", "optuna"], default="random", help="search algorithm (default random)")
    p.add_argument("--max-concurrent", type=int, default=None, help="concurrent trials (default: what the cluster fits)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (default 1)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the sweep in this folder")
    p.add_argument("--max-leak", type=float, default=0.0, help="champion rule: highest allowed leak rates (default 0)")
    p.add_argument("--min-retain-ratio", type=float, default=0.95,
                   help="champion rule: retain.vqa_acc >= this x vanilla's (default 0.95)")
    p.add_argument("--champion-fallback", choices=["objective", "none"], default="objective",
                   help="when no trial qualifies: best objective (default) or register nothing")
    p.set_defaults(handler=_cmd_sweep)

    p = sub.add_parser("mask", help="MMUnlearner's Fisher-ratio saliency mask (a Ray task), saved as safetensors")
    p.add_argument("--model", required=True, help="model folder (the one to unlearn)")
    p.add_argument("--records", required=True, help="shards folder (built by `unlearn data shard`)")
    p.add_argument("--modules", choices=["vision", "language", "both"], default="both")
    p.add_argument("--gamma", type=float, default=1.0, help="ratio threshold (default 1.0)")
    p.add_argument("--lora", action="store_true", help="compute it on LoRA adapters (train with model.lora=true)")
    p.add_argument("--out", required=True, help="mask file (.safetensors); sparsity goes beside it as .json")
    p.add_argument("--workdir", default="workdir", help="for the default MLflow store (WORKDIR/mlflow.db)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or WORKDIR/mlflow.db)")
    p.set_defaults(handler=_cmd_mask)

    p = sub.add_parser("demo", help="everything on the embedded default (what `make run` runs), cached")
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--methods", default=None, help="comma-separated baselines (default: all seven)")
    p.add_argument("--method-steps", type=int, default=40, help="unlearning steps per baseline (default 40)")
    p.add_argument("--sweep-samples", type=int, default=2, help="PUBG sweep trials (default 2; 0 = no sweep)")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("eval", help="evaluate a model on shards: every metric of the results table, table + JSON")
    p.add_argument("--model", required=True, help="model folder or models:/NAME@ALIAS")
    p.add_argument("--records", required=True, help="shards folder (built by `unlearn data shard`)")
    p.add_argument("--out", required=True, help="JSON file to write {metrics, per_sample}")
    p.add_argument("--max-per-group", type=int, default=64, help="rows per (split, task) evaluated (default 64)")
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--judge-url", default=None,
                   help="optional LLM judge: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (off by default)")
    p.add_argument("--judge-model", default=None, help="model name the judge endpoint serves")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the judge's API key ('' for none; the key is never logged)")
    p.add_argument("--judge-max-samples", type=int, default=None, help="judge at most this many answers")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("pull", help="download a registered model (models:/NAME@ALIAS or /VERSION), sha256-checked")
    p.add_argument("uri", help="models:/NAME@champion or models:/NAME/3")
    p.add_argument("--out", required=True, help="folder to write the HF model into")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or WORKDIR/mlflow.db)")
    p.add_argument("--workdir", default="workdir")
    p.set_defaults(handler=_cmd_pull)

    p = sub.add_parser("doctor", help="versions, devices, the Ray cluster and tracking URI a command would use")
    p.add_argument("--workdir", default="workdir")
    p.set_defaults(handler=_cmd_doctor)

    for leaf in [*sub.choices.values(), *dsub.choices.values()]:
        if leaf.get_default("handler") is not None:
            leaf.add_argument("--verbose", action="store_true",
                              help="show Ray's and the libraries' logs here instead of in WORKDIR/logs/")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (ConfigError, RecordError, FileNotFoundError, ValueError) as err:
        _error(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as err:
        term = console.active()
        if term is None or term.log_path is None:
            raise
        import traceback

        traceback.print_exc()  # into the log file
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")[:300]
        _error(f"error: {type(err).__name__}: {first} (full message and traceback in {term.log_path})")
        return 1
    finally:
        console.stop()


def _error(message: str) -> None:
    """Errors go to the terminal: stderr itself points at the log file once a command started."""
    term = console.active()
    if term is not None and term.log_path is not None:
        print(message, file=sys.stderr)  # also in the log file
        term.error(message)
    else:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

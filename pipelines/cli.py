"""The `unlearn` command line: the parser and the entry point. What each subcommand does is in
``pipelines/commands.py`` (thin: validate, call one pipeline function, print a table)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines import commands, console, data_commands
from unlearn_core.config import ConfigError, SynthConfig
from unlearn_core.data.schema import RecordError


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (docs/configuration.md)")
    p.add_argument("--workdir", default=None, help="working folder for records, shards, models, mlflow.db")
    p.add_argument("--model", default=None, help="model SPEC (overrides model.spec)")
    p.add_argument("--steps", type=int, default=None, help="overrides train.steps")
    p.add_argument("--workers", type=int, default=None, help="overrides train.num_workers")
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="7B cluster preset (pipelines/cluster_presets.py): " + _preset_names(),
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config field, dotted (train.lr=1e-4); every field: docs/configuration.md",
    )


# The output rule (unlearn_core.outputs), stated once for every command that writes.
OUT_RULE = "must not exist or be empty; an existing one is refused unless --force"
FORCE_HELP = (
    "replace an existing --out, only if lvlm-unlearn wrote it (its .lvlm-unlearn.json marker, or the "
    "written_by field of a report or mask); never anything else"
)


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help=FORCE_HELP)


def _preset_names() -> str:
    from pipelines.cluster_presets import PRESETS

    return ", ".join(sorted(PRESETS))


def _protocol_names() -> tuple[str, ...]:
    from unlearn_core.eval.protocols import protocol_names

    return protocol_names()


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
    p.add_argument("--out", required=True, help=f"records folder to write ({OUT_RULE})")
    _add_force(p)
    syn = SynthConfig()  # the defaults and descriptions are the schema's (`synth.*`), stated once
    for field, info in SynthConfig.model_fields.items():
        default = getattr(syn, field)
        what = (info.description or "").replace("%", "%%")  # argparse formats help with %
        flag = "--" + field.replace("_", "-")
        p.add_argument(flag, type=type(default), default=default, help=f"{what} (default {default:g})")
    p.set_defaults(handler=data_commands.cmd_data_synth)

    p = dsub.add_parser(
        "convert", help="convert a downloaded benchmark (MLLMU-Bench, CLEAR, JSONL) to records"
    )
    p.add_argument("--format", required=True, help="mllmu-bench, clear or jsonl")
    p.add_argument("--source", required=True, help="data set folder as downloaded (one subfolder per config)")
    p.add_argument("--out", required=True, help=f"records folder to write ({OUT_RULE})")
    _add_force(p)
    p.add_argument(
        "--forget-config",
        default=None,
        help="which forget config to use (mllmu-bench: forget_5; clear: forget10)",
    )
    p.set_defaults(handler=data_commands.cmd_data_convert)

    p = dsub.add_parser("validate", help="check a records folder: schema, images, duplicates, split overlap")
    p.add_argument("dir", help="records folder")
    p.set_defaults(handler=data_commands.cmd_data_validate)

    p = dsub.add_parser("shard", help="tokenize records into Parquet shards with Ray Data")
    p.add_argument("--records", required=True, help="records folder")
    p.add_argument("--model", required=True, help="model SPEC: HF id, local folder, or tiny-llava")
    p.add_argument(
        "--out",
        required=True,
        help="shards folder to write: new or empty, or shards this command built there (reused when "
        "unchanged; rebuilt only with --force)",
    )
    p.add_argument("--image-size", type=int, default=64, help="resize images to this side (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if the fingerprint is unchanged, replacing --out if lvlm-unlearn wrote it "
        "(never anything else)",
    )
    p.set_defaults(handler=data_commands.cmd_data_shard)

    p = sub.add_parser(
        "finetune", help="fine-tune the vanilla model on the forget + retain splits (Ray Train)"
    )
    _add_run_options(p)
    p.add_argument(
        "--name",
        default=None,
        help="model name under WORKDIR/models (default vanilla; with --exclude-forget the reference's keyed name)",
    )
    p.add_argument(
        "--exclude-forget",
        nargs="?",
        const="rows",
        choices=["rows", "people"],
        default=None,
        help="train the retrained reference: the same recipe without the forget rows (default: the rows "
        "unlearning forgets) or without any row of the forget people; cached under "
        "WORKDIR/models/reference-<rows|people>-<key> (`unlearn audit` uses it)",
    )
    p.set_defaults(handler=commands.cmd_finetune)

    p = sub.add_parser("run", help="one unlearning job (Ray Train): eval before/after, MLflow, registry")
    _add_run_options(p)
    p.add_argument(
        "--method", default=None, help="method name (overrides method.name; the methods: docs/methods.md)"
    )
    p.set_defaults(handler=commands.cmd_run)

    p = sub.add_parser(
        "sweep", help="Ray Tune sweep over a search space (tune_spaces/*.yaml); registers the champion"
    )
    _add_run_options(p)
    p.add_argument(
        "--space", default=None, help="search space YAML, e.g. tune_spaces/pubg.yaml (not with --resume)"
    )
    p.add_argument("--num-samples", type=int, default=None, help="trials (default: the space's num_samples)")
    p.add_argument(
        "--scheduler", choices=["asha", "none"], default="asha", help="ASHA early stopping (default) or none"
    )
    p.add_argument(
        "--search",
        choices=["random", "optuna"],
        default=None,
        help="search algorithm (default: the space's `search:`, else random)",
    )
    p.add_argument(
        "--max-concurrent", type=int, default=None, help="concurrent trials (default: what the cluster fits)"
    )
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (default 1)")
    p.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="start a failed trial again this often, e.g. when its node is lost (-1: always; default 0)",
    )
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the sweep in this folder")
    p.add_argument(
        "--max-leak", type=float, default=0.0, help="champion rule: highest allowed leak rates (default 0)"
    )
    p.add_argument(
        "--min-retain-ratio",
        type=float,
        default=0.95,
        help="champion rule: retain.vqa_acc >= this x vanilla's (default 0.95)",
    )
    p.add_argument(
        "--champion-fallback",
        choices=["objective", "none"],
        default="objective",
        help="when no trial qualifies (or, with --audit, none passes the audit): best objective (default) "
        "or register nothing",
    )
    p.add_argument(
        "--audit",
        action="store_true",
        help="audit the qualifying trials in the champion rule's order (`unlearn audit`) and register the "
        "first that passes; the registered version carries the verdict as tags",
    )
    p.set_defaults(handler=commands.cmd_sweep)

    p = sub.add_parser(
        "mask", help="MMUnlearner's Fisher-ratio saliency mask (a Ray task), saved as safetensors"
    )
    p.add_argument("--model", required=True, help="model folder (the one to unlearn)")
    p.add_argument("--shards", required=True, help="shards folder (built by `unlearn data shard`)")
    p.add_argument("--modules", choices=["vision", "language", "both"], default="both")
    p.add_argument("--gamma", type=float, default=1.0, help="ratio threshold (default 1.0)")
    p.add_argument(
        "--lora", action="store_true", help="compute it on LoRA adapters (train with model.lora=true)"
    )
    p.add_argument(
        "--out",
        required=True,
        help=f"mask file (.safetensors); sparsity goes beside it as .json (both {OUT_RULE})",
    )
    _add_force(p)
    p.add_argument("--workdir", default="workdir", help="for the default MLflow store (WORKDIR/mlflow.db)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or WORKDIR/mlflow.db)",
    )
    p.set_defaults(handler=commands.cmd_mask)

    p = sub.add_parser("demo", help="everything on the embedded default (what `make run` runs), cached")
    p.add_argument("--workdir", default="workdir")
    p.add_argument("--methods", default=None, help="comma-separated baselines (default: all seven)")
    p.add_argument("--method-steps", type=int, default=40, help="unlearning steps per baseline (default 40)")
    p.add_argument("--sweep-samples", type=int, default=2, help="PUBG sweep trials (default 2; 0 = no sweep)")
    p.add_argument(
        "--no-audit",
        action="store_true",
        help="skip auditing the sweep's qualifying trials against a reference retrained without the forget "
        "rows (the first run trains that reference: the vanilla recipe again); print the audit command instead",
    )
    p.set_defaults(handler=commands.cmd_demo)

    p = sub.add_parser(
        "eval",
        help="evaluate a model on shards under a protocol (synthetic, mllmu-bench, clear): table + JSON",
    )
    p.add_argument("--model", required=True, help="model folder or models:/NAME@ALIAS")
    p.add_argument("--shards", required=True, help="shards folder (built by `unlearn data shard`)")
    p.add_argument("--out", required=True, help=f"JSON file to write {{metrics, per_sample}} ({OUT_RULE})")
    _add_force(p)
    p.add_argument(
        "--max-per-group", type=int, default=64, help="rows per (split, task) evaluated (default 64)"
    )
    p.add_argument("--workdir", default="workdir")
    p.add_argument(
        "--judge-url",
        default=None,
        help="optional LLM judge: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (off by default)",
    )
    p.add_argument("--judge-model", default=None, help="model name the judge endpoint serves")
    p.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the judge's API key ('' for none; the key is never logged)",
    )
    p.add_argument("--judge-max-samples", type=int, default=None, help="judge at most this many answers")
    p.add_argument(
        "--clip-model",
        default=None,
        metavar="SPEC",
        help="CLIP checkpoint (HF id or folder) scoring each open answer against its image: "
        "quality.clipscore (raw cosine) and quality.clip_s (2.5 * max(cos, 0)); off by default",
    )
    p.add_argument(
        "--protocol",
        default=None,
        choices=_protocol_names(),
        help="prompts, decoding and metrics (default: from the benchmark the records come from)",
    )
    p.add_argument(
        "--zero-shot",
        action="store_true",
        help="mllmu-bench: no few-shot examples before the classification and cloze prompts (default: "
        "MLLMU-Bench eval.py's few-shot prompts, seeded)",
    )
    p.add_argument(
        "--reference-report",
        default=None,
        metavar="FILE.json",
        help="CLEAR: the eval (or score) JSON of the retain-only model; adds clear.forget_quality",
    )
    p.add_argument(
        "--track",
        action="store_true",
        help="also log the evaluation to MLflow as its own run: every metric under its report name, the "
        "JSON as an artifact ($MLFLOW_TRACKING_URI, else WORKDIR/mlflow.db; experiment lvlm-unlearn)",
    )
    p.set_defaults(handler=commands.cmd_eval)

    p = sub.add_parser(
        "score", help="score generations made anywhere (JSONL) against a records folder; no model"
    )
    p.add_argument(
        "--records", required=True, help="records folder (built by `unlearn data convert` / `synth`)"
    )
    p.add_argument("--predictions", required=True, help='JSON lines {"sample_id": ..., "generation": "..."}')
    p.add_argument(
        "--out",
        required=True,
        help=f"JSON file to write {{metrics, counts, problems, per_sample}} ({OUT_RULE})",
    )
    _add_force(p)
    p.add_argument(
        "--protocol",
        default=None,
        choices=_protocol_names(),
        help="default: from the records' source (mllmu-bench, clear, synthetic)",
    )
    p.add_argument(
        "--reference-predictions",
        default=None,
        help="CLEAR: predictions (with truth-ratio losses) of the retain-only model, for forget quality",
    )
    p.set_defaults(handler=data_commands.cmd_score)

    p = sub.add_parser(
        "audit",
        help="does a model really forget? membership inference, quantization, relearning and adversarial "
        "probes against a reference retrained without the forget rows (docs/audit.md)",
    )
    p.add_argument(
        "--model", required=True, help="model folder or models:/NAME@ALIAS (trained on WORKDIR's data)"
    )
    p.add_argument(
        "--workdir", default="workdir", help="the workdir the model was trained in (default workdir)"
    )
    p.add_argument(
        "--reference-excludes",
        choices=["rows", "people"],
        default="rows",
        help="the reference leaves out the forget rows unlearning forgets (default) or every row of the "
        "forget people; trained once with the vanilla recipe when the workdir has none",
    )
    p.add_argument(
        "--checks",
        default=None,
        help="comma-separated subset of membership,quantization,relearn,benign,probes (default: all)",
    )
    p.add_argument(
        "--skip-data-check",
        action="store_true",
        help="audit a model without provenance (exported elsewhere) against the workdir's data anyway",
    )
    p.add_argument("--no-track", action="store_true", help="write the report files only, no MLflow run")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a field of the reference's recipe (the vanilla fine-tune's config), e.g. train.seed=1",
    )
    p.set_defaults(handler=commands.cmd_audit)

    p = sub.add_parser(
        "pull", help="download a registered model (models:/NAME@ALIAS or /VERSION), sha256-checked"
    )
    p.add_argument("uri", help="models:/NAME@champion or models:/NAME/3")
    p.add_argument("--out", required=True, help=f"folder to write the HF model into ({OUT_RULE})")
    _add_force(p)
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or WORKDIR/mlflow.db)",
    )
    p.add_argument("--workdir", default="workdir")
    p.set_defaults(handler=commands.cmd_pull)

    p = sub.add_parser(
        "doctor", help="versions, devices, the Ray cluster and tracking URI a command would use"
    )
    p.add_argument("--workdir", default="workdir")
    p.set_defaults(handler=commands.cmd_doctor)

    p = sub.add_parser(
        "relocate",
        help="after copying or moving a workdir: point its MLflow store (mlflow.db) at its own mlartifacts/",
    )
    p.add_argument("--workdir", required=True, help="the copied or moved workdir")
    p.set_defaults(handler=commands.cmd_relocate)

    for leaf in [*sub.choices.values(), *dsub.choices.values()]:
        if leaf.get_default("handler") is not None:
            leaf.add_argument(
                "--verbose",
                action="store_true",
                help="show Ray's and the libraries' logs here instead of in WORKDIR/logs/",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success, 2 for bad input (one line naming the file, row or field), 1 when the work
    itself failed, 130 on Ctrl-C. A traceback never reaches the terminal: it goes to the command's log
    file (for an unexpected error before the log started: a crash log in ``console.user_log_dir()``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console.quiet_library_bars()  # before any library runs: every command, `unlearn pull` included
    try:
        return int(args.handler(args))
    except (ConfigError, RecordError, FileNotFoundError, ValueError, RecursionError) as err:
        if console.active() is not None:  # a refusal before the log started needs no crash log
            _log_traceback(args)
        text = str(err) or type(err).__name__
        if isinstance(err, RecursionError):
            text = f"input nested too deep to read ({text})"
        _error(f"error: {text}")
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as err:
        log_path = _log_traceback(args)
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")[:300]
        where = f" (full message and traceback in {log_path})" if log_path else ""
        _error(f"error: {type(err).__name__}: {first}{where}")
        return 1
    finally:
        console.stop()


def _log_traceback(args: argparse.Namespace) -> Path | None:
    """The current exception's traceback into the command's log file (stderr points there once the
    console started), else into a crash log of its own; returns the file, or None if none could be written."""
    import traceback

    term = console.active()
    if term is not None and term.log_path is not None:
        traceback.print_exc()  # stderr is the log file
        return term.log_path
    command = " ".join(x for x in (getattr(args, "command", None), getattr(args, "data_command", None)) if x)
    try:
        path = console.log_file_path(None, f"{command or 'unlearn'}-error")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc(), encoding="utf-8")
    except OSError:
        return None
    return path


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

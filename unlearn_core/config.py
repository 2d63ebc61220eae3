"""One validated configuration schema, shared by the CLI, the Tune spaces and the MLflow params.

A bad value raises ``ConfigError`` naming the field (``train.lr: Input should be greater than 0``).
``flatten()`` turns a config into the dotted ``section.field`` keys that MLflow params and Tune
search spaces use; ``with_overrides()`` applies such dotted keys back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SECRET_MARKERS = ("token", "secret", "password", "api_key", "apikey", "credential")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def absolute_folder(path: str | Path) -> str:
    """Folders handed to Ray are absolute: Ray Train workers and Ray tasks run in other working
    directories, where a relative path would point elsewhere."""
    return str(Path(path).expanduser().resolve())


def local_model_spec(spec: str) -> str:
    """A model spec naming an existing local folder, made absolute; HF ids, ``tiny-llava`` and
    ``models:/`` URIs stay as they are."""
    return (
        absolute_folder(spec)
        if not spec.startswith("models:/") and Path(spec).expanduser().is_dir()
        else spec
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Strict):
    """The synthetic identity benchmark (``unlearn data synth``; a workspace generates it again when
    these fields or the generator change)."""

    people: int = Field(40, ge=4, le=2000, description="forget + retain people")
    images_per_person: int = Field(6, ge=1, le=200, description="training images per person")
    unseen_per_person: int = Field(
        2, ge=1, le=50, description="held-out images per person (forget_unseen, retain_unseen)"
    )
    forget_pct: float = Field(10.0, gt=0, lt=100, description="share of the people to forget, in %")
    utility_people: int = Field(8, ge=0, le=2000, description="extra people for the utility split")
    # They teach the tiny model to read hats, glasses and objects off the pixels of images it never saw.
    describe_images: int = Field(
        5760,
        ge=0,
        le=100_000,
        description="anonymous faces seen once each, read only by the vanilla fine-tune, for its eyesight "
        "(docs/data.md; 0 = none)",
    )
    image_size: int = Field(64, ge=16, le=1024, description="image side in pixels")
    seed: int = Field(0, description="seed of everything generated (the same seed gives the same bytes)")


class ModelConfig(_Strict):
    """The model: where it comes from and what of it trains."""

    spec: str = Field(
        "tiny-llava",
        description="HF id, local folder, `tiny-llava` (built from scratch; for `run`: WORKDIR/models/vanilla) "
        "or a registry URI `models:/NAME@ALIAS`",
    )
    lora: bool = Field(False, description="train PEFT LoRA adapters instead of the full weights")
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names LoRA adapts; `[]` = the model family's defaults (docs/models.md)",
    )
    train_vision: bool = Field(True, description="the vision tower and projector train too (LoRA or full)")
    trust_remote_code: bool = Field(False, description="let transformers run a model repository's own code")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (memory)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights' dtype when loaded"
    )

    @field_validator("spec")
    @classmethod
    def _local_folder_absolute(cls, v: str) -> str:
        return local_model_spec(v)


class TrainConfig(_Strict):
    """Optimisation, workers and evaluation during training (Ray Train's ``ScalingConfig`` and
    ``FailureConfig`` come from here)."""

    lr: float = Field(
        1e-3, gt=0, le=1.0, description="AdamW learning rate (linear warm-up, cosine decay to 10%)"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="rows per micro-batch and worker")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    seed: int = Field(0, description="seeds the model's initialisation and the data order")
    num_workers: int = Field(1, ge=1, description="training workers (Ray Train)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker holds")
    deepspeed_stage: Literal[0, 2, 3] = Field(
        0,
        description="0 = DDP; 2 / 3 = DeepSpeed ZeRO-2 / ZeRO-3 (sharded checkpoints; resume needs the same "
        "stage and worker count). Methods with their own optimizer steps (mmunlearner, pubg with a mask) "
        "are refused",
    )
    bf16: bool = Field(True, description="bf16 mixed precision, on GPU only")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0 = only at the end)")
    eval_every: int = Field(
        0,
        ge=0,
        description="steps between in-training evaluations, logged as `eval/<metric>` (0 = only the final one)",
    )
    eval_max_samples: int = Field(
        64,
        ge=1,
        description="rows per (split, task) of the final evaluation (a quarter, at least 4, in training)",
    )
    max_failures: int = Field(
        0, ge=-1, description="restarts from the last checkpoint after a failure (-1 = always)"
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="intra-op threads per worker, always set (0 = one per CPU of the worker, at least 1): "
        "the numbers depend on it",
    )
    prefetch_batches: int = Field(
        2, ge=0, le=64, description="batches collated ahead in a background thread (0 = off)"
    )
    group_by_length: bool = Field(
        False,
        description="batches of rows of similar length (less padding; each stream read into memory first). "
        "Off: the vanilla models it trained read held objects far worse (docs/results.md). On several DDP "
        "workers it turns on find_unused_parameters (a text-only batch leaves the vision tower unused)",
    )
    launcher: Literal["auto", "ray_train", "in_process"] = Field(
        "auto",
        description="who runs the training loop: ray_train (a TorchTrainer: controller + worker actors), "
        "in_process (the calling process as the one worker: checkpoints, resume, retries and callbacks "
        "as under a TorchTrainer), auto (in_process for one worker without DeepSpeed, else ray_train)",
    )
    # Recognising a face is learned from identity/open questions; at 1x they are 1/9 of the mix and
    # 40 identities take ~9x more steps to learn.
    task_weights: dict[str, int] = Field(
        default_factory=lambda: {"identity_vqa": 6, "open_vqa": 3},
        description="vanilla fine-tune: how many times each task's rows appear per epoch",
    )

    @model_validator(mode="after")
    def _launcher_fits(self) -> TrainConfig:
        if self.launcher == "in_process" and (self.num_workers > 1 or self.deepspeed_stage):
            raise ValueError(
                f"launcher=in_process runs one worker without DeepSpeed (num_workers={self.num_workers}, "
                f"deepspeed_stage={self.deepspeed_stage}); use launcher=ray_train or auto"
            )
        return self

    @field_validator("task_weights")
    @classmethod
    def _known_tasks(cls, v: dict[str, int]) -> dict[str, int]:
        from unlearn_core.data.schema import TASKS

        bad = [k for k in v if k not in TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; valid: {list(TASKS)}")
        if any(not isinstance(n, int) or n < 0 or n > 100 for n in v.values()):
            raise ValueError("weights must be integers in [0, 100]")
        return v


def resolve_launcher(train: TrainConfig) -> Literal["ray_train", "in_process"]:
    """Who runs the training loop: ``train.launcher``, where ``auto`` is ``in_process`` for one worker
    without DeepSpeed (Ray Train's controller, worker and dataset actors would add only start-up time;
    the weights are the same) and ``ray_train`` otherwise. The one rule for every job: `unlearn run`,
    `finetune`, sweep trials (with ``train.num_workers`` = ``--workers-per-trial``) and `make run`."""
    if train.launcher != "auto":
        return train.launcher
    return "in_process" if train.num_workers == 1 and not train.deepspeed_stage else "ray_train"


class TrackingConfig(_Strict):
    """MLflow: where runs go and what is registered."""

    tracking_uri: str | None = Field(
        None,
        description="the tracking server or store (unset: `$MLFLOW_TRACKING_URI`, else `sqlite:///WORKDIR/mlflow.db`)",
    )
    experiment: str = Field("lvlm-unlearn", description="the MLflow experiment")
    registered_model_name: str | None = Field(
        None,
        description="registry name of the model (unset: `lvlm-unlearn-<method>` for run and sweep champions)",
    )
    log_model: bool = Field(True, description="log the final model on the run as an mlflow.pyfunc model")


class MethodConfig(_Strict):
    """The unlearning method and its parameters (below, per method)."""

    name: str = Field("pubg", description="a registered method (`unlearn_core/method_registry.py`)")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the method's parameters; unset ones take the method's defaults"
    )

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()


class RunConfig(_Strict):
    """One job's whole configuration: the one schema of the CLI, the Tune spaces and the MLflow params."""

    workdir: str = Field(
        "workdir", validate_default=True, description="records, shards, models, mlflow.db and Ray results"
    )
    records: str | None = Field(
        None, description="a records folder to use instead of the synthetic benchmark"
    )
    shards: str | None = Field(None, description="a shards folder to use as is")
    synth: SynthConfig = Field(default_factory=SynthConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("workdir", "records", "shards")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else absolute_folder(v)


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        value = e.get("input")
        if isinstance(value, float) and value != value:  # NaN fails every bound; say what it is
            parts.append(f"{prefix}{loc}: must be a number, got nan")
            continue
        parts.append(f"{prefix}{loc}: {e['msg']}")
    return "; ".join(parts)


def validate(model_cls: type[BaseModel], data: dict[str, Any], prefix: str = "") -> Any:
    """Validate ``data`` against ``model_cls``; raise ConfigError naming every bad field."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {_format_errors(err, prefix)}") from None


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        from unlearn_core.bounded import load_yaml

        loaded = load_yaml(p.read_bytes(), str(p)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    cfg = validate(RunConfig, data)
    return with_overrides(cfg, overrides or {})


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values (``train.lr``, ``method.params.w_bg``); lists stay lists."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_dump().items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict):
        if not value:
            out[key] = {}
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = value


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted-key overrides (from the CLI or a Tune trial) and re-validate the whole config."""
    data = cfg.model_dump()
    for dotted, value in overrides.items():
        node = data
        keys = dotted.split(".")
        if keys[0] not in data:
            raise ConfigError(f"unknown config field: {dotted}")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {k!r} is a value, not a section")
        node[keys[-1]] = value
    return validate(RunConfig, data)


def with_launcher_resolved(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``train.launcher`` resolved (``resolve_launcher``): what ran is what MLflow records."""
    return with_overrides(cfg, {"train.launcher": resolve_launcher(cfg.train)})


def mlflow_params(cfg: BaseModel) -> dict[str, str]:
    """Flattened params for MLflow with secrets removed (never log tokens or keys)."""
    params = {}
    for k, v in flatten(cfg).items():
        if any(m in k.lower() for m in SECRET_MARKERS):
            continue
        params[k] = str(v)[:500]
    return params

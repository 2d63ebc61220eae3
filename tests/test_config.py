import pytest

from unlearn_core.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    flatten,
    load_run_config,
    mlflow_params,
    with_overrides,
)
from unlearn_core.training.deepspeed_cfg import deepspeed_config


def test_bad_value_names_the_field():
    with pytest.raises(ConfigError, match=r"train\.lr"):
        with_overrides(RunConfig(), {"train.lr": -1})
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        with_overrides(RunConfig(), {"train.stepz": 3})
    with pytest.raises(ConfigError, match="unknown config field: nope.x"):
        with_overrides(RunConfig(), {"nope.x": 1})


def test_overrides_roundtrip_through_flatten():
    cfg = with_overrides(RunConfig(), {"train.lr": 3e-4, "method.params.w_bg": 2.0, "model.lora": True})
    flat = flatten(cfg)
    assert flat["train.lr"] == 3e-4
    assert flat["method.params.w_bg"] == 2.0
    assert flat["model.lora"] is True
    again = with_overrides(RunConfig(), {k: v for k, v in flat.items() if k.startswith(("train.", "model."))})
    assert again.train == cfg.train and again.model == cfg.model


def test_yaml_file_and_secrets_not_logged(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "train:\n  steps: 7\ntracking:\n  experiment: x\nmethod:\n  name: NPO\n  params: {beta: 0.2, api_token: s3cret}\n"
    )
    cfg = load_run_config(p)
    assert cfg.train.steps == 7 and cfg.method.name == "npo"
    params = mlflow_params(cfg)
    assert params["method.params.beta"] == "0.2"
    assert not any("s3cret" in v for v in params.values())
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config(stage):
    tc = TrainConfig(deepspeed_stage=stage, batch_size=4, grad_accum=2, use_gpu=True, lr=2e-5)
    ds = deepspeed_config(tc, world_size=8)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == 4 * 2 * 8
    assert ds["bf16"]["enabled"] is True
    assert ds["optimizer"]["params"]["lr"] == 2e-5
    assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (stage == 3)
    cpu = deepspeed_config(TrainConfig(deepspeed_stage=stage, use_gpu=False), world_size=1)
    assert cpu["bf16"]["enabled"] is False


def test_deepspeed_config_rejects_stage0():
    with pytest.raises(ConfigError, match="deepspeed_stage"):
        deepspeed_config(TrainConfig(deepspeed_stage=0), world_size=1)


def test_folders_are_made_absolute_where_the_config_is_read(tmp_path, monkeypatch):
    """Ray Train workers and Ray tasks run in other working directories: a relative workdir, shards
    folder or local model folder would point elsewhere there (`make run` uses `--workdir workdir`)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_model").mkdir()
    cfg = with_overrides(RunConfig(), {"workdir": "wd", "shards": "wd/shards", "model.spec": "my_model"})
    assert cfg.workdir == str(tmp_path / "wd") and cfg.shards == str(tmp_path / "wd" / "shards")
    assert cfg.model.spec == str(tmp_path / "my_model")
    assert RunConfig().workdir == str(tmp_path / "workdir")  # the default too
    # what is not a local folder stays as written
    for spec in ("tiny-llava", "llava-hf/llava-1.5-7b-hf", "models:/lvlm-unlearn-pubg@champion"):
        assert with_overrides(RunConfig(), {"model.spec": spec}).model.spec == spec
    # idempotent: a worker validating the driver's dump gets the same paths
    assert RunConfig.model_validate(cfg.model_dump()) == cfg

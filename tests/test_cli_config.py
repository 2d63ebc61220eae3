"""How the CLI builds a run config: one starting config for run, sweep and demo, --preset, --set, --shards."""

from __future__ import annotations

import pytest

from pipelines.cli import build_parser
from pipelines.cluster_presets import PRESETS
from pipelines.commands import run_config_from_args
from pipelines.defaults import default_config
from unlearn_core.config import ConfigError, load_run_config
from unlearn_core.methods import get_method


def _cfg(argv: list[str], command: str):
    return run_config_from_args(build_parser().parse_args(argv), command)


def test_run_sweep_and_demo_start_from_the_same_config(tmp_path):
    run = _cfg(["run", "--workdir", str(tmp_path)], "unlearn")
    sweep = _cfg(["sweep", "--space", "tune_spaces/pubg.yaml", "--workdir", str(tmp_path)], "unlearn")
    demo = load_run_config(default_config("unlearn"), {"workdir": str(tmp_path)})  # what pipelines.demo loads
    assert run == sweep == demo
    assert (run.train.steps, run.train.lr, run.train.torch_threads) == (100, 5e-4, 2)  # configs/unlearn.yaml


def test_method_defaults_come_from_the_method_only(tmp_path):
    cfg = _cfg(["run", "--workdir", str(tmp_path), "--set", "method.name=pubg"], "unlearn")
    assert cfg.method.params == {}
    assert get_method(cfg.method.name, cfg.method.params).params.w_ret == 1.0


def test_preset_applies_then_set_wins(tmp_path):
    cfg = _cfg(
        ["run", "--workdir", str(tmp_path), "--preset", "llava-1.5-7b-lora", "--set", "train.lr=2.0e-4"],
        "unlearn",
    )
    preset = PRESETS["llava-1.5-7b-lora"]
    assert cfg.model.spec == preset["model.spec"] and cfg.model.lora and cfg.train.deepspeed_stage == 2
    assert cfg.train.num_workers == 8 and cfg.train.lr == 2e-4
    with pytest.raises(ConfigError, match="unknown cluster preset 'nope'; known: llava-1.5-7b-full"):
        _cfg(["finetune", "--workdir", str(tmp_path), "--preset", "nope"], "finetune")
    with pytest.raises(ConfigError, match="train.batch_size"):  # the preset and --set validated together
        _cfg(
            [
                "run",
                "--workdir",
                str(tmp_path),
                "--preset",
                "llava-1.5-7b-lora",
                "--set",
                "train.batch_size=0",
            ],
            "unlearn",
        )


def test_mask_and_eval_take_a_shards_folder():
    parser = build_parser()
    args = parser.parse_args(["eval", "--model", "m", "--shards", "s", "--out", "o.json"])
    assert args.shards == "s"
    args = parser.parse_args(["mask", "--model", "m", "--shards", "s", "--out", "m.safetensors"])
    assert args.shards == "s"
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--model", "m", "--records", "s", "--out", "o.json"])

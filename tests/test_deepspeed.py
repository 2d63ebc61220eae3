"""DeepSpeed ZeRO-2/3 on the CPU under gloo: the engine adapter in one process, then a 2-worker Ray run.

Nothing is mocked: a real one-rank gloo process group and real ``deepspeed.initialize`` (its CPU
accelerator JIT-builds a shared-memory comm op once, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from pipelines.evaluate import load_shard_rows
from pipelines.shards import stream_dataset
from pipelines.shards.build import shard_records
from pipelines.train import export_final_model, fit
from tests.pipeline_fixtures import tiny_finetune_spec, write_tiny_records
from unlearn_core.config import ConfigError, ModelConfig, RunConfig, TrainConfig, with_overrides
from unlearn_core.data.encode import collate, encode_example
from unlearn_core.eval.runner import select_eval_rows
from unlearn_core.methods import get_method
from unlearn_core.models.loading import load_model_and_processor
from unlearn_core.models.tiny import build_tiny_llava
from unlearn_core.models.tokenizer import train_word_tokenizer
from unlearn_core.training import ds_engine
from unlearn_core.training.worker import BuiltModel, check_supported, make_step_fn, sft_loss

CORPUS = ["Who is this person?", "Alice Smith, a baker from Paris.", "Bob Jones, a painter."]


@pytest.fixture(scope="module")
def tiny():
    """Tokenizer-backed processor and one real 2-row image batch for the tiny LLaVA."""
    tok = train_word_tokenizer(CORPUS)
    _, processor = build_tiny_llava(tok, image_size=32, hidden=32)
    rng = np.random.default_rng(0)
    rows = [
        encode_example(
            processor,
            question="Who is this person?",
            answer=answer,
            image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            image_size=32,
        )
        for answer in ("Alice Smith, a baker from Paris.", "Bob Jones, a painter.")
    ]
    return tok, processor, collate(rows, processor)


def _model(tok, seed: int = 0) -> torch.nn.Module:
    model, _ = build_tiny_llava(tok, image_size=32, hidden=32, seed=seed)
    return model.train()


def _full_state(engine) -> dict[str, torch.Tensor]:
    with ds_engine.full_weights(engine) as module:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _tc(stage: int, **kw) -> TrainConfig:
    return TrainConfig(deepspeed_stage=stage, batch_size=2, lr=5e-3, steps=20, max_grad_norm=1.0, **kw)


@pytest.fixture(autouse=True)
def engine_state_put_back():
    """Every engine of this module is made in the test process, which runs other modules' in-process
    training next: what DeepSpeed changes process-wide is put back after each test (as the worker does)."""
    with ds_engine.process_state_kept():
        yield


def test_zero3_engine_leaves_torch_linear_as_it_found_it(gloo_group, tiny):
    """The cause of an order-dependent suite: a ZeRO-3 engine replaces ``torch.nn.functional.linear``
    for the whole process (its memory-efficient linear: matmul + add, which rounds differently from
    torch's fused linear), so an in-process run made after it gave other weights than the same run
    under a TorchTrainer (a fresh process). ``process_state_kept`` puts torch's linear back."""
    tok, _, _ = tiny
    torch_linear, local_rank = torch.nn.functional.linear, os.environ.get("LOCAL_RANK")
    x, layer = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)), torch.nn.Linear(32, 8)
    expected = layer(x)
    with ds_engine.process_state_kept():
        ds_engine.init_engine(
            _model(tok), _tc(3), world_size=1, zero_overrides={"stage3_param_persistence_threshold": 0}
        )
        assert torch.nn.functional.linear is not torch_linear  # DeepSpeed's wrapper, process-wide
        assert os.environ["LOCAL_RANK"] == "0"
    assert torch.nn.functional.linear is torch_linear
    assert os.environ.get("LOCAL_RANK") == local_rank
    assert torch.equal(layer(x), expected)  # a model made before or after computes as it did


def test_custom_step_methods_are_refused_under_deepspeed():
    cfg = with_overrides(RunConfig(), {"train.deepspeed_stage": 2, "method.name": "mmunlearner"})
    with pytest.raises(ConfigError, match=r"train.deepspeed_stage=2: method.name='mmunlearner'"):
        check_supported(cfg)
    pubg = with_overrides(
        cfg, {"method.name": "pubg", "method.params": {"mask": "vision"}, "train.deepspeed_stage": 3}
    )
    with pytest.raises(
        ConfigError, match=r"train.deepspeed_stage=3: method.name='pubg'.*method.params.mask=none"
    ):
        check_supported(pubg)
    check_supported(cfg, mode="finetune")  # the method is irrelevant to the fine-tune
    check_supported(with_overrides(cfg, {"method.name": "npo"}))
    check_supported(with_overrides(cfg, {"method.name": "pubg", "method.params": {}}))
    check_supported(with_overrides(cfg, {"method.name": "mmunlearner", "train.deepspeed_stage": 0}))


@pytest.mark.parametrize("stage", [2, 3])
def test_engine_sft_ga_checkpoint_roundtrip(stage, gloo_group, tiny, tmp_path):
    tok, processor, batch = tiny
    tc = _tc(stage, grad_accum=2, warmup_steps=2)
    cfg = RunConfig(train=tc)
    model = _model(tok)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    # Persistence threshold 0: ZeRO-3 partitions even this tiny model's (small) parameters.
    engine = ds_engine.init_engine(
        model,
        tc,
        world_size=1,
        zero_overrides={"stage3_param_persistence_threshold": 0} if stage == 3 else None,
    )
    assert engine.zero_optimization_stage() == stage
    assert type(engine.optimizer.optimizer) is torch.optim.AdamW  # torch's AdamW on CPU: nothing JIT-built
    w0 = _full_state(engine)

    # SFT through the worker's own step factory (dispatches to the engine step).
    built = BuiltModel(model=engine.module, processor=processor, cfg=cfg, streams={"train": ("",)})
    sft = make_step_fn(built, engine, engine.optimizer, {"train": itertools.repeat(batch)}, tc)
    logs = [sft(step) for step in range(6)]
    group = engine.optimizer.param_groups[0]  # the warm-up + cosine schedule drives the engine's optimizer
    assert group["initial_lr"] == pytest.approx(tc.lr) and group["lr"] < tc.lr
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.5, [round(d["loss"], 3) for d in logs]
    assert all(np.isfinite(d["grad_norm"]) and d["grad_norm"] > 0 for d in logs)
    assert engine.global_steps == 6  # grad_accum micro-batches per optimizer step
    w6 = _full_state(engine)
    assert any(not torch.equal(w0[k], w6[k]) for k in w0)

    # ZeRO-3 partitions the live parameters; the gathered view has the model's full shapes, and
    # training goes on after it (the forward hooks come back).
    if stage == 3:
        assert all(p.numel() == 0 for p in engine.module.parameters())
    assert {k: v.shape for k, v in w6.items()} == shapes
    with ds_engine.full_weights(engine) as module:
        assert all(p.numel() > 0 for p in module.parameters())
        with torch.no_grad():
            gathered_loss = float(sft_loss(module, batch))
        built.save_final(engine, tmp_path / "final")
    saved, _ = load_model_and_processor(str(tmp_path / "final"), ModelConfig())
    assert saved.state_dict().keys() == w6.keys()
    assert all(torch.equal(v, w6[k]) for k, v in saved.state_dict().items())
    with torch.no_grad():
        assert float(sft_loss(engine, batch)) == pytest.approx(gathered_loss, rel=1e-5)

    # Checkpoint at step 6, take step 7, restore, redo step 7: same weights (optimizer state restored).
    ckpt = tmp_path / "ckpt"
    assert ds_engine.save_ds_checkpoint(engine, ckpt, 6) is True
    assert ds_engine.is_deepspeed_checkpoint(ckpt)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 6
    sft(6)
    w7 = _full_state(engine)
    assert ds_engine.load_ds_checkpoint(engine, ckpt) == 6
    restored = _full_state(engine)
    assert all(torch.equal(restored[k], w6[k]) for k in w6)
    sft(6)
    redone = _full_state(engine)
    for k in w7:
        torch.testing.assert_close(redone[k], w7[k])

    # A non-custom-step method (gradient ascent) on a fresh engine: the forget NLL goes up.
    engine = ds_engine.init_engine(_model(tok, seed=1), tc, world_size=1)
    ga = get_method("ga")
    built_ga = BuiltModel(
        model=engine.module, processor=processor, cfg=cfg, streams={"forget": ("",)}, method=ga
    )
    ga_step = make_step_fn(built_ga, engine, engine.optimizer, {"forget": itertools.repeat(batch)}, tc)
    with torch.no_grad():
        before = float(sft_loss(engine, batch))
    stats = [ga_step(step) for step in range(2)]
    assert {"loss", "forget_nll", "grad_norm"} <= set(stats[0])
    assert stats[0]["loss"] == pytest.approx(-stats[0]["forget_nll"])
    assert stats[0]["forget_nll"] == pytest.approx(before, rel=1e-5)
    with torch.no_grad():
        assert float(sft_loss(engine, batch)) > before + 0.1


# --------------------------------------------------------------------------- 2-worker Ray Train run


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("ds_train")
    shard_records(write_tiny_records(root / "records"), root / "shards", image_size=32)
    return root / "shards"


def test_ray_two_workers_zero2_finetune_eval_and_resume(shards, tmp_path):
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(tmp_path / "wd"),
            "shards": str(shards),
            "train.deepspeed_stage": 2,
            "train.steps": 4,
            "train.batch_size": 4,
            "train.num_workers": 2,
            "train.cpus_per_worker": 0.5,
            "train.checkpoint_every": 2,
            "train.eval_every": 4,
            "train.lr": 3e-3,
        },
    )
    job = tiny_finetune_spec(
        cfg, shards, eval_records=select_eval_rows(load_shard_rows(shards), max_per_group=1)
    )
    result = fit(
        job, {"train": stream_dataset(shards, "train")}, name="ds2", storage_path=str(tmp_path / "ray")
    )
    ckpts = sorted(result.best_checkpoints, key=lambda c: c[1]["step"])
    assert [int(m["step"]) for _, m in ckpts] == [2, 4]
    assert "forget.leak_rate" in result.metrics and np.isfinite(result.metrics["loss"])
    step2 = ckpts[0][0]
    with step2.as_directory() as d:
        # Both ranks' folders merged into one checkpoint: rank 0's model states + each rank's ZeRO shard.
        files = {p.name for p in (Path(d) / "deepspeed" / "step2").iterdir()}
        assert {
            "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        } <= files
        assert json.loads((Path(d) / "trainer_state.json").read_text())["step"] == 2

    final = export_final_model(result, tmp_path / "final")
    model, _ = load_model_and_processor(str(final), ModelConfig())
    tokenizer = AutoProcessor.from_pretrained(str(shards / "processor")).tokenizer
    fresh, _ = build_tiny_llava(tokenizer, image_size=32, seed=cfg.train.seed)  # the worker's initial model
    trained = model.state_dict()
    assert trained.keys() == fresh.state_dict().keys()
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())

    # Resume from the step-2 checkpoint: only steps 3-4 run, from DeepSpeed's restored state.
    job.resume_from = step2.path
    job.eval_records = None
    resumed = fit(
        job,
        {"train": stream_dataset(shards, "train")},
        name="ds2-resumed",
        storage_path=str(tmp_path / "ray"),
    )
    assert [int(m["step"]) for _, m in resumed.best_checkpoints] == [4]
    with resumed.checkpoint.as_directory() as d:
        assert json.loads((Path(d) / "trainer_state.json").read_text())["step"] == 4
    model2, _ = load_model_and_processor(str(export_final_model(resumed, tmp_path / "final2")), ModelConfig())
    assert model2.state_dict().keys() == trained.keys()

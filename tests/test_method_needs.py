"""Methods faithful at scale: MMUnlearner's k and preserve sets, LoRA saliency, gradient accumulation,
DDP with retain-only steps, PUBG's leaking rows and temperature, the mask cache key, non-finite losses,
and methods that declare their own needs (no caller tests a method's name)."""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn

from tests.ray_head import free_ports
from tests.test_methods import BigramLM, answers_of, guide_batch, make_view, ref_dists, ref_kl, ref_nll
from tests.test_saliency import llava_batch, llava_groups, snapshot, tiny_llava
from unlearn_core.config import ConfigError, RunConfig, TrainConfig, mlflow_params, with_overrides
from unlearn_core.data.selection import balanced_by_entity, count_stream_rows
from unlearn_core.methods import METHODS, get_method
from unlearn_core.methods.base import NonFiniteLossError
from unlearn_core.methods.mmunlearner import forget_rows, preserve_rows
from unlearn_core.methods.saliency import (
    SaliencyMask,
    check_mask_matches,
    compute_saliency_masks,
    fisher_diagonal,
    mask_cache_key,
)
from unlearn_core.training.steps import make_step
from unlearn_core.training.worker import BuiltModel, check_supported, ddp_kwargs, trainable_model

ROOT = Path(__file__).resolve().parents[1]


# ---- 1. MMUnlearner's preserve sets cover every entity they should ----------------------------------
def bench_rows() -> list[dict]:
    """The default benchmark's shape: 36 retain + 4 forget people, several VQA and text QA rows each.
    Sample ids sort by entity, so 'the first 512 by sample_id' covers only the first entities."""
    rows = []
    for e in range(40):
        split = "forget" if e < 4 else "retain"
        for task, n in (
            ("identity_vqa", 12),
            ("open_vqa", 12),
            ("fact_vqa", 16),
            ("text_qa", 8),
            ("caption", 4),
        ):
            rows += [
                {
                    "sample_id": f"{e:03d}-{task}-{i:02d}",
                    "entity_id": f"p{e:03d}",
                    "split": split,
                    "task": task,
                }
                for i in range(n)
            ]
    return rows


def test_preserve_sets_cover_every_entity_and_the_forget_peoples_text():
    rows = bench_rows()
    vision = preserve_rows(rows, "vision", 512)
    language = preserve_rows(rows, "language", 512)
    assert len(vision) == len(language) == 512
    assert {r["entity_id"] for r in vision} == {f"p{e:03d}" for e in range(4, 40)}  # all 36 retain people
    assert all(r["split"] == "retain" and r["task"] != "text_qa" for r in vision)
    assert {r["entity_id"] for r in language} == {f"p{e:03d}" for e in range(40)}  # all 40 people
    forget_text = [r for r in language if r["split"] == "forget"]
    assert {r["entity_id"] for r in forget_text} == {"p000", "p001", "p002", "p003"}
    assert all(r["task"] == "text_qa" for r in forget_text)
    assert {r["task"] for r in language} == {"identity_vqa", "open_vqa", "fact_vqa", "text_qa"}
    per_entity = [sum(r["entity_id"] == f"p{e:03d}" for r in vision) for e in range(4, 40)]
    assert max(per_entity) - min(per_entity) <= 1  # balanced
    f = forget_rows(rows, 64)
    assert {r["entity_id"] for r in f} == {"p000", "p001", "p002", "p003"} and all(
        r["split"] == "forget" for r in f
    )
    # a larger budget only adds rows; a tiny one still spreads over distinct entities
    assert balanced_by_entity(rows, 10) == balanced_by_entity(rows, 20)[:10]
    assert len({r["entity_id"] for r in balanced_by_entity(rows, 10)}) == 10


# ---- 2. k derived from the split sizes, forget batches drawn only on forget steps ---------------------
def test_k_is_derived_unless_set_and_recorded_as_a_param():
    m = get_method("mmunlearner")
    rows = bench_rows()
    counts = count_stream_rows({"all": _Table(rows)})
    assert counts["forget"] == 4 * 40 and counts["retain"] == 36 * 52 + 4 * 12
    assert m.derive({"forget": 168, "retain": 3632}, 16) == {"forget_every": 21}  # 227 / 11 batches
    assert get_method("mmunlearner", {"forget_every": 3}).derive({"forget": 168, "retain": 3632}, 16) == {}
    with pytest.raises(ValueError, match="forget_every"):
        m.uses_forget_batch(0)
    with pytest.raises(ValueError, match="forget stream is empty"):
        m.derive({"forget": 0, "retain": 10}, 16)
    resolved = get_method(
        "mmunlearner", {**m.resolved_params(), **m.derive({"forget": 168, "retain": 3632}, 16)}
    )
    cfg = with_overrides(
        RunConfig(), {"method.name": "mmunlearner", "method.params": resolved.resolved_params()}
    )
    params = mlflow_params(cfg)
    assert params["method.params.forget_every"] == "21" and params["method.params.mask"] == "both"
    assert params["method.params.gamma"] == "1.0" and "method.params" not in params
    npo = with_overrides(
        RunConfig(), {"method.name": "npo", "method.params": get_method("npo").resolved_params()}
    )
    assert mlflow_params(npo)["method.params.beta"] == "0.1"  # defaults are recorded, not "{}"


class _Table:
    """The two columns ``count_stream_rows`` reads, from row dicts."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __getitem__(self, col: str):
        values = [r[col] for r in self.rows]
        return type("Col", (), {"to_pylist": lambda self: values})()


class Counting:
    def __init__(self, batches) -> None:
        self.batches, self.drawn = batches, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        return next(self.batches)


def test_forget_batches_are_drawn_only_on_forget_steps():
    model = tiny_llava()
    method = get_method("mmunlearner", {"mask": "language", "forget_every": 3})
    method.set_mask(compute_saliency_masks(model, llava_groups, [llava_batch(1)], [llava_batch(2)]))
    forget, retain = Counting(itertools.repeat(llava_batch(1))), Counting(itertools.repeat(llava_batch(2)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = make_step(method, None, model, opt, {"forget": forget, "retain": retain}, TrainConfig(steps=7))
    flags = [step(i)["forget_step"] for i in range(7)]
    assert flags == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert forget.drawn == 3 and retain.drawn == 7


# ---- 3. LoRA saliency from PEFT's real init, the same adapters in the mask job and the worker ---------
def real_lora(model: nn.Module) -> nn.Module:
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))


def test_lora_mask_from_peft_init_comes_from_the_base_weight_fisher():
    model = real_lora(tiny_llava())
    a_names = [n for n, _ in model.named_parameters() if ".lora_A." in n]
    assert a_names and all(float(p.abs().sum()) == 0 for n, p in model.named_parameters() if ".lora_B." in n)
    forget, preserve = [llava_batch(1), llava_batch(3)], [llava_batch(2), llava_batch(4, text_only=True)]
    sal = compute_saliency_masks(model, llava_groups, forget, {"vision": preserve, "language": preserve})
    # the factors' own Fisher is exactly 0 (B = 0): the old mask was all-True for every lora_A
    own = fisher_diagonal(model, forget, a_names)
    assert all(float(f.abs().sum()) == 0 for f in own.values())
    assert not all(bool(sal.masks[n].all()) for n in a_names)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.endswith("base_layer.weight"))
    # hand computation for one adapted layer: B rows / A columns from W's summed Fisher ratio
    a = a_names[0]
    base, b = a.replace("lora_A.default", "base_layer"), a.replace("lora_A", "lora_B")
    w = dict(model.named_parameters())[base]
    w.requires_grad_(True)
    f_f, f_p = fisher_diagonal(model, forget, [base])[base], fisher_diagonal(model, preserve, [base])[base]
    w.requires_grad_(False)
    rows = (f_f.sum(1) + 1e-15) / (f_p.sum(1) + 1e-15) >= 1.0
    cols = (f_f.sum(0) + 1e-15) / (f_p.sum(0) + 1e-15) >= 1.0
    assert torch.equal(sal.masks[b], rows.unsqueeze(1).expand_as(sal.masks[b]))
    assert torch.equal(sal.masks[a], cols.unsqueeze(0).expand_as(sal.masks[a]))
    for gamma in (0.1, 10.0):  # the sweep's range: neither all-True nor all-False at both ends
        g = compute_saliency_masks(
            model, llava_groups, forget, {"vision": preserve, "language": preserve}, gamma=gamma
        )
        frac = sum(int(g.masks[n].sum()) for n in a_names) / sum(g.masks[n].numel() for n in a_names)
        assert 0.0 < frac < 1.0 or gamma == 0.1 and frac <= 1.0


def test_mask_job_and_worker_draw_the_same_lora_adapters():
    cfg = with_overrides(
        RunConfig(), {"model.lora": True, "model.lora_targets": ["q_proj", "v_proj"], "train.seed": 7}
    )
    torch.manual_seed(123)  # the mask job's RNG state
    in_mask_job = trainable_model(tiny_llava(), cfg)
    torch.manual_seed(7 + 1)  # a worker seeds seed + rank first and may have drawn other numbers
    torch.rand(5)
    in_worker = trainable_model(tiny_llava(), cfg)
    a = {n: p for n, p in in_mask_job.named_parameters() if ".lora_A." in n}
    assert a and all(torch.equal(p, dict(in_worker.named_parameters())[n]) for n, p in a.items())
    other = trainable_model(tiny_llava(), with_overrides(cfg, {"train.seed": 8}))
    assert not all(torch.equal(p, dict(other.named_parameters())[n]) for n, p in a.items())


# ---- 4. train.grad_accum on the plain (DDP) path --------------------------------------------------------
def _cat(views: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.cat([v[k] for v in views]) for k in views[0]}


def _micro(seed: int) -> dict[str, Tensor]:
    """Every row has the same answer length, so the mean of 4 micro-batch means is the 4x-batch mean."""
    plain = make_view(seed, [3, 2], [3, 3])
    guide = make_view(seed + 50, [2, 3], [3, 3], prefix="guide_")
    teacher = make_view(seed + 90, [4, 2], [3, 3], prefix="teacher_", answers=answers_of(guide, "guide_"))
    idk = make_view(seed + 20, [3, 2], [3, 3], prefix="idk_")
    rand = make_view(seed + 30, [3, 2], [3, 3], prefix="rand_")
    return {**plain, **guide, **teacher, **idk, **rand}


ACCUM_PARAMS = {
    "pubg": {"teacher_cache": False, "w_ret": 0.5},
    "npo": {"alpha": 0.5},
    "simnpo": {"alpha": 0.5},
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_grad_accum_4_equals_a_4x_batch_on_ddp_or_is_refused(name, gloo_group):
    from torch.nn.parallel import DistributedDataParallel

    method = get_method(name, ACCUM_PARAMS.get(name, {}))
    cfg = with_overrides(RunConfig(), {"method.name": name, "train.grad_accum": 4})
    if method.custom_step:
        with pytest.raises(ConfigError, match="train.grad_accum=4.*cannot accumulate"):
            check_supported(cfg)
        return
    check_supported(cfg)
    forgets = [_micro(10 * i) for i in range(4)]
    retains = [make_view(100 + i, [2, 3], [4, 4]) for i in range(4)]
    ref = BigramLM(seed=3)
    results = []
    for accum, f_stream, r_stream in ((4, forgets, retains), (1, [_cat(forgets)], [_cat(retains)])):
        model = DistributedDataParallel(BigramLM(seed=0))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        tc = TrainConfig(steps=1, grad_accum=accum, max_grad_norm=1e6)
        batches = {"forget": iter(f_stream)} | ({"retain": iter(r_stream)} if method.needs_retain else {})
        make_step(method, ref, model, opt, batches, tc)(0)
        results.append(model.module.table.detach().clone())
    assert not torch.equal(results[0], BigramLM(seed=0).table)
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-4)


def test_sft_and_deepspeed_keep_honouring_grad_accum():
    """The refusal is for custom-step methods only; the fine-tune accumulates too."""
    check_supported(
        with_overrides(RunConfig(), {"method.name": "mmunlearner", "train.grad_accum": 4}), "finetune"
    )
    with pytest.raises(ValueError, match="grad_accum must be 1"):
        make_step(
            get_method("mmunlearner"),
            None,
            BigramLM(),
            torch.optim.SGD(BigramLM().parameters(), lr=1),
            {},
            TrainConfig(grad_accum=2),
        )


# ---- 5. 2-worker DDP MMUnlearner with a text-only retain batch ---------------------------------------
def _ddp_worker(rank: int, port: int, out: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = tiny_llava(seed=0)
        method = get_method("mmunlearner", {"mask": "both", "forget_every": 2})
        mask = compute_saliency_masks(model, llava_groups, [llava_batch(1)], [llava_batch(2)])
        method.set_mask(mask)
        built = BuiltModel(model=model, processor=None, cfg=RunConfig(), streams={}, method=method)
        ddp = DistributedDataParallel(model, **ddp_kwargs(built))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        forget = itertools.repeat(llava_batch(10 + rank))
        retain = itertools.repeat(llava_batch(20 + rank, text_only=True))  # no image: no vision gradient
        step = make_step(method, None, ddp, opt, {"forget": forget, "retain": retain}, TrainConfig(steps=4))
        for i in range(4):
            step(i)
        out[rank] = {n: p.detach().clone() for n, p in model.named_parameters()}
    finally:
        dist.destroy_process_group()


def test_two_worker_ddp_mmunlearner_with_a_text_only_retain_batch():
    assert ddp_kwargs(BuiltModel(None, None, RunConfig(), {}, method=get_method("mmunlearner")))[
        "find_unused_parameters"
    ]
    assert not ddp_kwargs(BuiltModel(None, None, RunConfig(), {}, method=get_method("npo")))[
        "find_unused_parameters"
    ]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(free_ports(1)[0], out), nprocs=2, join=True)
        w0, w1 = dict(out[0]), dict(out[1])
    before = dict(tiny_llava(seed=0).named_parameters())
    assert all(torch.equal(w0[n], w1[n]) for n in w0)  # the ranks stayed in sync
    assert any(
        not torch.equal(w0[n], before[n]) for n in w0 if "vision_tower" in n
    )  # the ascent moved vision


# ---- 6. PUBG keeps the leaking rows for the ascent, leaves them out of L_BG only ---------------------
def test_pubg_leaking_rows_stay_in_the_ascent_and_leave_the_guidance_term():
    student, teacher = BigramLM(seed=0), BigramLM(seed=4)
    batch = guide_batch()
    batch["guide_keep"] = torch.tensor([True, False, True])
    m = get_method("pubg", {"w_ga": 0.5, "w_ret": 0.0, "teacher_cache": False})
    loss, stats = m.loss(student, batch, None, teacher)
    kept = [0, 2]
    t_rows, s_rows = ref_dists(teacher, batch, "teacher_"), ref_dists(student, batch, "guide_")
    bg = torch.stack(
        [sum(ref_kl(t, s) for t, s in zip(t_rows[b], s_rows[b], strict=True)) for b in kept]
    ).mean()
    torch.testing.assert_close(loss, -0.5 * ref_nll(student, batch) + bg)  # NLL over all 3 rows
    assert stats["bg_kl"] == pytest.approx(float(bg))
    batch["guide_keep"] = torch.zeros(3, dtype=torch.bool)
    assert m.guidance_kl(student, batch, teacher).item() == 0.0


def test_teacher_cache_marks_leaking_rows_instead_of_dropping_them():
    import json

    import pyarrow as pa

    from pipelines.train.teacher import mark_leaking

    table = pa.table(
        {
            "sample_id": ["a", "b"],
            "teacher_answer": ["A person in a red coat.", "This is Alice Smith."],
            "private_facts": [json.dumps({"name": "Bob Jones"}), json.dumps({"name": "Alice Smith"})],
        }
    )
    marked, leaking = mark_leaking(table)
    assert marked.num_rows == 2 and marked["guide_keep"].to_pylist() == [True, False]
    assert leaking["sample_id"].to_pylist() == ["b"]


# ---- 7. PUBG temperature with a top-k teacher ------------------------------------------------------
def test_tail_mode_refuses_a_temperature_it_cannot_apply_exactly():
    with pytest.raises(
        ConfigError, match="temperature=0.5 with topk_mode='tail'.*cannot be tempered exactly"
    ):
        get_method("pubg", {"temperature": 0.5})
    with pytest.raises(ConfigError, match="topk_mode='tail'"):
        get_method("pubg", {"temperature": 2.0, "teacher_cache": False, "top_k": 4})
    get_method("pubg", {"temperature": 0.5, "topk_mode": "renorm"})
    get_method("pubg", {"temperature": 0.5, "teacher_cache": False})  # live, uncut: exact


# ---- 8. mask cache key and partial masks ----------------------------------------------------------------
def test_mask_cache_key_changes_with_everything_the_mask_depends_on():
    spec = get_method("mmunlearner").mask_spec()
    base = RunConfig(model={"lora": True}).model.model_dump()
    key = mask_cache_key("sha", "fp", spec, base, 0)
    variants = [
        mask_cache_key("sha", "fp", spec, {**base, "lora_targets": ["q_proj"]}, 0),
        mask_cache_key("sha", "fp", spec, {**base, "lora_alpha": 8}, 0),
        mask_cache_key("sha", "fp", spec, {**base, "lora_r": 4}, 0),
        mask_cache_key("sha", "fp", spec, {**base, "train_vision": False}, 0),
        mask_cache_key("sha", "fp", spec, base, 1),
        mask_cache_key("sha", "fp2", spec, base, 0),
        mask_cache_key("sha", "fp", get_method("mmunlearner", {"gamma": 2.0}).mask_spec(), base, 0),
        mask_cache_key("sha", "fp", get_method("mmunlearner", {"mask": "vision"}).mask_spec(), base, 0),
    ]
    assert len({key, *variants}) == len(variants) + 1
    full = RunConfig().model.model_dump()
    assert mask_cache_key("sha", "fp", spec, full, 0) == mask_cache_key(
        "sha", "fp", spec, full, 1
    )  # no LoRA draw


def test_a_mask_covering_part_of_its_group_is_refused():
    model = tiny_llava()
    sal = compute_saliency_masks(model, llava_groups, [llava_batch(1)], [llava_batch(2)])
    partial = dict(sal.select("both"))
    dropped = next(n for n in partial if "vision_tower" in n)
    del partial[dropped]
    check_mask_matches(model, partial)  # every key fits ...
    with pytest.raises(
        ValueError, match=r"covers \d+ of the \d+ trainable parameters.*" + re.escape(dropped[:20])
    ):
        check_mask_matches(model, partial, list(sal.select("both")))
    method = get_method("mmunlearner", {"mask": "both", "forget_every": 1})
    method.set_mask(partial)
    with pytest.raises(ValueError, match="recompute it"):
        method.forget_step(model, None, llava_batch(1))
    SaliencyMask  # noqa: B018 - the file format is covered in test_saliency


# ---- 9. a non-finite loss stops the run before the update ----------------------------------------------
@pytest.mark.parametrize("name", ["grad_diff", "mmunlearner"])
def test_non_finite_loss_stops_naming_the_step_and_terms(name):
    model = tiny_llava()
    method = get_method(name, {"forget_every": 1} if name == "mmunlearner" else {})
    if method.mask_spec() is not None:
        method.set_mask(compute_saliency_masks(model, llava_groups, [llava_batch(1)], [llava_batch(2)]))
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    before = snapshot(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = {"forget": itertools.repeat(llava_batch(1)), "retain": itertools.repeat(llava_batch(2))}
    step = make_step(method, None, model, opt, batches, TrainConfig(steps=5))
    with pytest.raises(
        NonFiniteLossError, match=r"step 0: non-finite .*loss nan \(loss terms: forget_nll=nan"
    ):
        step(0)
    after = snapshot(model)
    assert all(torch.equal(before[n], after[n]) or before[n].isnan().any() for n in before)


# ---- 10. methods own their needs ----------------------------------------------------------------------
def test_no_caller_tests_a_method_name_or_view_string():
    pattern = re.compile(
        r"""(method\.name|cfg\.method\.name|\bname)\s*==\s*["']|["'](guide_|teacher_|idk_|rand_)["']\s+in\s"""
    )
    offenders = []
    for folder in ("pipelines", "unlearn_core/training"):
        for path in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line) and "quarantine" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []


def test_methods_declare_views_prepared_inputs_and_mask():
    assert (
        get_method("pubg").teacher_cache().k == 16
        and get_method("pubg", {"top_k": 32}).teacher_cache().k == 32
    )
    assert get_method("pubg", {"w_bg": 0}).teacher_cache() is None
    assert (
        get_method("pubg").mask_spec() is None
        and get_method("pubg", {"mask": "vision"}).mask_spec().group == "vision"
    )
    assert get_method("mmunlearner").mask_spec().group == "both"  # the default group lives on the method
    for name in ("ga", "grad_diff", "kl", "npo", "simnpo", "reject", "random"):
        m = get_method(name)
        assert (
            m.teacher_cache() is None
            and m.mask_spec() is None
            and m.derive({"forget": 1, "retain": 9}, 4) == {}
        )
    assert get_method("simnpo").views == ("",) and not get_method("simnpo").needs_ref
    assert "mask=none" in get_method("pubg", {"mask": "both"}).deepspeed_hint()
    copy.deepcopy(get_method("mmunlearner"))  # picklable / copyable for Ray

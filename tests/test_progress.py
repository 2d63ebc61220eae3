"""The one-line training progress printed by the Ray Train controller callback."""

from __future__ import annotations

from pipelines.train.progress import ProgressCallback, format_progress


def test_progress_line_has_share_loss_speed_time_left_and_eval_metrics() -> None:
    line = format_progress(
        "unlearn-ga",
        40,
        100,
        {"loss": 0.4123, "steps_per_s": 4.0, "forget.leak_rate": 0.25, "grad_norm": 3.0},
    )
    assert (
        line
        == "[unlearn-ga] step 40/100 (40%) loss 0.4123 | 4.00 steps/s, 15 s left | forget.leak_rate 0.250"
    )


def test_progress_line_without_speed_or_eval() -> None:
    assert (
        format_progress("finetune", 1000, 1000, {"loss": 0.1}) == "[finetune] step 1000/1000 (100%) loss 0.1"
    )


def test_callback_prints_rank0_reports_only_with_a_step(capsys) -> None:
    cb = ProgressCallback("x", 10)
    cb.after_report(None, [], None)
    cb.after_report(None, [{"loss": 1.0}], None)
    cb.after_report(None, [{"step": 5.0, "loss": 1.0, "steps_per_s": 1.0}, {"step": 5.0}], None)
    assert capsys.readouterr().out == "[x] step 5/10 (50%) loss 1 | 1.00 steps/s, 5 s left\n"

"""An audit report as flat metrics (MLflow, sweep objective terms) and as a one-page table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unlearn_core.audit.verdict import within


def _put(out: dict[str, float], name: str, value: Any) -> None:
    if isinstance(value, bool):
        out[name] = float(value)
    elif isinstance(value, int | float):
        out[name] = float(value)


def flat_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Every figure under a stable dotted name (``audit.<check>.<...>``); 1/0 for pass/fail.

    Names a sweep objective can use (lower is better unless said): ``audit.membership.max_abs_gap``,
    ``audit.relearn.max_leak_gap``, ``audit.relearn.step2.leak_gap``, ``audit.benign.max_gap``,
    ``audit.quantization.max_rise``, ``audit.probes.max_gap``; ``audit.pass`` (higher is better).
    """
    out: dict[str, float] = {}
    _put(out, "audit.pass", report["pass"])
    _put(out, "audit.checks_failed", len(report["failed"]))
    checks = report["checks"]
    for name, check in checks.items():
        if check["status"] != "absent":
            _put(out, f"audit.{name}.pass", check["status"] == "pass")
    if m := checks.get("membership"):
        gaps = []
        for level, data in m["levels"].items():
            if data["status"] == "absent":
                continue
            for attack, a in data["attacks"].items():
                base = f"audit.membership.{level}.{attack}"
                _put(out, f"{base}.auc", a["model"]["auc"])
                _put(out, f"{base}.auc_ref", a["reference"]["auc"])
                _put(out, f"{base}.ci_low", a["model"]["ci"][0])
                _put(out, f"{base}.ci_high", a["model"]["ci"][1])
                _put(out, f"{base}.gap", a["gap"])
                _put(out, f"{base}.privleak", a["privleak"])
            _put(out, f"audit.membership.{level}.max_abs_gap", data["max_abs_gap"])
            gaps.append(data["max_abs_gap"])
        if gaps:
            _put(out, "audit.membership.max_abs_gap", max(gaps))
    if q := checks.get("quantization"):
        for scheme, s in q["schemes"].items():
            for fig, rise in s["rise"].items():
                _put(out, f"audit.quantization.{scheme}.{fig}.rise", rise)
                _put(out, f"audit.quantization.{scheme}.{fig}.rise_ref", s["rise_ref"].get(fig))
            for k in ("retain_vqa", "caption_f1"):
                _put(out, f"audit.quantization.{scheme}.{k}", s["figures"].get(k))
            _put(out, f"audit.quantization.{scheme}.max_rise", s["max_rise"])
        _put(out, "audit.quantization.max_rise", q["max_rise"])
    if r := checks.get("relearn"):
        for row in r["curve"]:
            base = f"audit.relearn.step{row['step']}"
            for k in ("leak", "leak_ref", "leak_gap", "identity_acc", "identity_acc_ref", "identity_gap",
                      "retain_vqa", "caption_f1"):  # fmt: skip
                _put(out, f"{base}.{k}", row[k])
        _put(out, "audit.relearn.max_leak_gap", r["max_leak_gap"])
        _put(out, "audit.relearn.max_identity_gap", r["max_identity_gap"])
        _put(out, "audit.relearn.reference_unlearned_until", r["reference_unlearned_until"])
    if b := checks.get("benign"):
        for fig, row in b["figures"].items():
            for k in ("rise", "rise_ref", "gap"):
                _put(out, f"audit.benign.{fig}.{k}", row[k])
        _put(out, "audit.benign.max_gap", b["max_gap"])
    if p := checks.get("probes"):
        for probe, row in p["probes"].items():
            for k in ("leak", "leak_ref", "gap", "control_recall", "control_recall_ref"):
                _put(out, f"audit.probes.{probe}.{k}", row[k])
        _put(out, "audit.probes.worst", p["worst"])
        _put(out, "audit.probes.worst_ref", p["worst_ref"])
        _put(out, "audit.probes.max_gap", p["max_gap"])
    for check, seconds in (report.get("seconds") or {}).items():
        _put(out, f"audit.seconds.{check}", seconds)
    return out


def _f(x: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def verdict_lines(report: Mapping[str, Any]) -> list[str]:
    """One line per check: the decisive figure against the reference, the threshold, the result."""
    c = report["checks"]
    lines = []
    if m := c.get("membership"):
        for level, data in m["levels"].items():
            if data["status"] == "absent":
                lines.append(f"membership ({level}): ABSENT: {data['reason']}")
                continue
            worst = max(data["attacks"].items(), key=lambda kv: abs(kv[1]["gap"]))
            a = worst[1]
            lines.append(
                f"membership ({level}): {data['status'].upper()}: worst attack {worst[0]} AUC {_f(a['model']['auc'])} "
                f"[{_f(a['model']['ci'][0])}, {_f(a['model']['ci'][1])}] vs reference {_f(a['reference']['auc'])}, "
                f"|gap| {abs(a['gap']):.3f} (limit {m['threshold']:g})"
            )
    if r := c.get("relearn"):
        until = r["reference_unlearned_until"]
        reach = (
            f"the reference has not learned the people from T yet up to step {until}"
            if until
            else "the reference learns the people from T at the first step already"
        )
        lines.append(
            f"relearning: {r['status'].upper()}: max leak gap {_f(r['max_leak_gap'], True)}, max identity gap "
            f"{_f(r['max_identity_gap'], True)} over steps {', '.join(str(x['step']) for x in r['curve'][1:])} "
            f"(limit {r['threshold']:g}); {reach}"
        )
    if b := c.get("benign"):
        lines.append(
            f"benign relearning: {b['status'].upper()}: leak rise minus the reference's {_f(b['max_gap'], True)} "
            f"(limit {b['threshold']:g})"
        )
    if q := c.get("quantization"):
        worst = ", ".join(f"{k} {_f(s['max_rise'], True)}" for k, s in q["schemes"].items())
        lines.append(
            f"quantization: {q['status'].upper()}: largest rise of a forget figure: {worst} (limit {q['threshold']:g})"
        )
    if p := c.get("probes"):
        worst_probe = max(
            p["probes"].items(), key=lambda kv: kv[1]["gap"] if kv[1]["gap"] is not None else -1
        )
        lines.append(
            f"probes: {p['status'].upper()}: worst leak {_f(p['worst'])} vs reference {_f(p['worst_ref'])}; largest gap "
            f"{_f(worst_probe[1]['gap'], True)} ({worst_probe[0]}) (limit {p['threshold']:g})"
        )
    lines.append(f"VERDICT: {'PASS' if report['pass'] else 'FAIL (' + ', '.join(report['failed']) + ')'}")
    return lines


def format_report(report: Mapping[str, Any]) -> str:
    """The one-page table: every figure beside the reference's, then the verdict lines."""
    c = report["checks"]
    rows: list[tuple[str, str, str, str]] = []  # what, model, reference, pass
    plain_m, plain_r = report["plain"]["model"], report["plain"]["reference"]
    for k in ("leak_seen", "leak_unseen", "vqa_seen", "vqa_unseen", "retain_vqa", "caption_f1"):
        rows.append((f"plain {k}", _f(plain_m.get(k)), _f(plain_r.get(k)), ""))
    if m := c.get("membership"):
        for level, data in m["levels"].items():
            if data["status"] == "absent":
                rows.append((f"MIA {level}", "absent", "absent", ""))
                continue
            for attack, a in data["attacks"].items():
                ci = f"{_f(a['model']['auc'])} [{_f(a['model']['ci'][0])},{_f(a['model']['ci'][1])}]"
                ci_r = f"{_f(a['reference']['auc'])} [{_f(a['reference']['ci'][0])},{_f(a['reference']['ci'][1])}]"
                rows.append(
                    (f"MIA {level} {attack} AUC (PrivLeak {a['privleak']:+.1f})", ci, ci_r, _pf(a["pass"]))
                )
    if r := c.get("relearn"):
        for row in r["curve"]:
            rows.append(
                (
                    f"relearn {row['step']:>2} steps: leak(V)",
                    _f(row["leak"]),
                    _f(row["leak_ref"]),
                    _pf(row["pass"]),
                )
            )
            rows.append(
                (
                    f"relearn {row['step']:>2} steps: identity acc(V)",
                    _f(row["identity_acc"]),
                    _f(row["identity_acc_ref"]),
                    "",
                )
            )
            rows.append((f"relearn {row['step']:>2} steps: retain VQA / caption F1",
                         f"{_f(row['retain_vqa'])} / {_f(row['caption_f1'])}", f"{_f(row['retain_vqa_ref'])} / {_f(row['caption_f1_ref'])}", ""))  # fmt: skip
    if b := c.get("benign"):
        for fig, row in b["figures"].items():
            rows.append((f"benign: {fig} before -> after", f"{_f(row['before'])} -> {_f(row['after'])}",
                         f"{_f(row['before_ref'])} -> {_f(row['after_ref'])}", _pf(within(row["gap"], b["threshold"]))))  # fmt: skip
        u = b["utility_after"]
        rows.append(("benign: retain VQA / caption F1 after", f"{_f(u['retain_vqa'][0])} / {_f(u['caption_f1'][0])}",
                     f"{_f(u['retain_vqa'][1])} / {_f(u['caption_f1'][1])}", ""))  # fmt: skip
    if q := c.get("quantization"):
        for scheme, s in q["schemes"].items():
            for fig in s["rise"]:
                rows.append((f"{scheme}: {fig} (rise)", f"{_f(s['figures'].get(fig))} ({_f(s['rise'][fig], True)})",
                             f"{_f(s['figures_ref'].get(fig))} ({_f(s['rise_ref'].get(fig), True)})", ""))  # fmt: skip
            rows.append((f"{scheme}: retain VQA / caption F1", f"{_f(s['figures'].get('retain_vqa'))} / {_f(s['figures'].get('caption_f1'))}",
                         f"{_f(s['figures_ref'].get('retain_vqa'))} / {_f(s['figures_ref'].get('caption_f1'))}", _pf(s["pass"])))  # fmt: skip
    if p := c.get("probes"):
        for probe, row in p["probes"].items():
            rows.append((f"probe {probe}: leak (control recall)", f"{_f(row['leak'])} ({_f(row['control_recall'])})",
                         f"{_f(row['leak_ref'])} ({_f(row['control_recall_ref'])})", _pf(row["pass"])))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "model", "", "")])
    w2 = max(len(r[2]) for r in rows + [("", "", "reference", "")])
    head = f"{'check':<{width}}  {'model':>{w1}}  {'reference':>{w2}}  result"
    body = [f"{a:<{width}}  {b:>{w1}}  {c_:>{w2}}  {d}" for a, b, c_, d in rows]
    return "\n".join([head, "-" * len(head), *body, "", *verdict_lines(report)])


def _pf(ok: bool) -> str:
    return "pass" if ok else "FAIL"

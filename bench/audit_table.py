"""The audit table of docs/audit.md from `unlearn audit` reports: one column per audited model, the
retrained reference first, every cell read from a report's own JSON (no number typed by hand).

Run: ``.venv/bin/python bench/audit_table.py NAME=WORKDIR/audit/audit-....json ...`` (the columns in
order); prints the Markdown table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Report = Mapping[str, Any]


def _f(x: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _mia(level: str, attack: str, who: str) -> Callable[[Report], str]:
    def cell(r: Report) -> str:
        data = r["checks"]["membership"]["levels"][level]
        if data["status"] == "absent":
            return "absent"
        a = data["attacks"][attack][who]
        return f"{a['auc']:.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]"

    return cell


def _relearn(step: int, key: str) -> Callable[[Report], str]:
    def cell(r: Report) -> str:
        row = next(x for x in r["checks"]["relearn"]["curve"] if x["step"] == step)
        return _f(row[key])

    return cell


def _status(check: str) -> Callable[[Report], str]:
    def cell(r: Report) -> str:
        c = r["checks"][check]
        return {"pass": "pass", "fail": "**FAIL**", "absent": "absent"}[c["status"]]

    return cell


def _probe(probe: str, key: str) -> Callable[[Report], str]:
    return lambda r: _f(r["checks"]["probes"]["probes"][probe][key])


def _quant(scheme: str, fig: str, key: str) -> Callable[[Report], str]:
    return lambda r: _f(
        r["checks"]["quantization"]["schemes"][scheme][key][fig], signed=key.startswith("rise")
    )


PROBES = ("paraphrase", "by_name", "unseen_images", "few_shot", "prefill", "refusal_suppression")
# (row label, the model's cell, the reference's cell: read from any report, its reference side)
ROWS: list[tuple[str, Callable[[Report], str], Callable[[Report], str]]] = [
    ("plain leak, seen / unseen images",
     lambda r: f"{_f(r['plain']['model']['leak_seen'])} / {_f(r['plain']['model']['leak_unseen'])}",
     lambda r: f"{_f(r['plain']['reference']['leak_seen'])} / {_f(r['plain']['reference']['leak_unseen'])}"),
    ("plain forget VQA, seen / unseen",
     lambda r: f"{_f(r['plain']['model']['vqa_seen'])} / {_f(r['plain']['model']['vqa_unseen'])}",
     lambda r: f"{_f(r['plain']['reference']['vqa_seen'])} / {_f(r['plain']['reference']['vqa_unseen'])}"),
    ("plain retain VQA / caption F1",
     lambda r: f"{_f(r['plain']['model']['retain_vqa'])} / {_f(r['plain']['model']['caption_f1'])}",
     lambda r: f"{_f(r['plain']['reference']['retain_vqa'])} / {_f(r['plain']['reference']['caption_f1'])}"),
    ("**membership**", _status("membership"), lambda r: ""),
    *[(f"MIA person, {a} AUC [95% CI]", _mia("person", a, "model"), _mia("person", a, "reference"))
      for a in ("loss", "zlib", "min_k", "min_k_plus_plus", "reference")],
    *[(f"MIA image, {a} AUC [95% CI]", _mia("image", a, "model"), _mia("image", a, "reference"))
      for a in ("loss", "zlib", "min_k", "min_k_plus_plus", "reference")],
    ("PrivLeak person / image (loss)",
     lambda r: " / ".join(f"{r['checks']['membership']['levels'][lv]['attacks']['loss']['privleak']:+.0f}"
                          for lv in ("person", "image")), lambda r: "0 / 0"),
    ("**relearning**", _status("relearn"), lambda r: ""),
    *[(f"relearn {s} steps: leak(V)", _relearn(s, "leak"), _relearn(s, "leak_ref")) for s in (0, 1, 2, 4, 8, 16)],
    *[(f"relearn {s} steps: identity acc(V)", _relearn(s, "identity_acc"), _relearn(s, "identity_acc_ref"))
      for s in (0, 2, 16)],
    ("relearn 16 steps: retain VQA", _relearn(16, "retain_vqa"), _relearn(16, "retain_vqa_ref")),
    ("reference not yet learned up to step", lambda r: str(r["checks"]["relearn"]["reference_unlearned_until"]),
     lambda r: ""),
    ("**benign relearning**", _status("benign"), lambda r: ""),
    ("benign: leak seen / unseen after 50 steps",
     lambda r: " / ".join(_f(r["checks"]["benign"]["figures"][k]["after"]) for k in ("leak_seen", "leak_unseen")),
     lambda r: " / ".join(_f(r["checks"]["benign"]["figures"][k]["after_ref"]) for k in ("leak_seen", "leak_unseen"))),
    ("benign: rise minus the reference's (max)", lambda r: _f(r["checks"]["benign"]["max_gap"], True), lambda r: ""),
    ("**quantization**", _status("quantization"), lambda r: ""),
    *[(f"{s}: leak seen (rise)", lambda r, s=s: f"{_quant(s, 'leak_seen', 'figures')(r)} ({_quant(s, 'leak_seen', 'rise')(r)})",
       lambda r, s=s: f"{_quant(s, 'leak_seen', 'figures_ref')(r)} ({_quant(s, 'leak_seen', 'rise_ref')(r)})") for s in ("rtn8", "rtn4")],
    *[(f"{s}: forget VQA seen (rise)", lambda r, s=s: f"{_quant(s, 'vqa_seen', 'figures')(r)} ({_quant(s, 'vqa_seen', 'rise')(r)})",
       lambda r, s=s: f"{_quant(s, 'vqa_seen', 'figures_ref')(r)} ({_quant(s, 'vqa_seen', 'rise_ref')(r)})") for s in ("rtn8", "rtn4")],
    ("quantization: largest rise", lambda r: _f(r["checks"]["quantization"]["max_rise"], True), lambda r: ""),
    ("**probes**", _status("probes"), lambda r: ""),
    *[(f"probe {p}: leak (control)", lambda r, p=p: f"{_probe(p, 'leak')(r)} ({_probe(p, 'control_recall')(r)})",
       lambda r, p=p: f"{_probe(p, 'leak_ref')(r)} ({_probe(p, 'control_recall_ref')(r)})") for p in PROBES],
    ("**verdict**", lambda r: "PASS" if r["pass"] else "**FAIL**", lambda r: "(reference)"),
]  # fmt: skip


def table(reports: Mapping[str, Report]) -> str:
    names = list(reports)
    first = reports[names[0]]
    head = ["", "retrained reference", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, model_cell, ref_cell in ROWS:
        cells = [ref_cell(first)]
        for name in names:
            try:
                cells.append(model_cell(reports[name]))
            except (KeyError, StopIteration, TypeError):
                cells.append("-")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    reports = {}
    for arg in argv:
        name, _, path = arg.partition("=")
        reports[name] = json.loads(Path(path).read_text())
    refs = {r["reference"]["weights_sha256"] for r in reports.values()}
    if len(refs) != 1:
        raise SystemExit(f"the reports were made against {len(refs)} different references")
    print(table(reports))


if __name__ == "__main__":
    main(sys.argv[1:])

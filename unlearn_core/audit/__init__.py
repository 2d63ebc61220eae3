"""Does a model really forget? Attacks on the audited model and on a reference retrained without the
forget rows, and the verdict (docs/audit.md).

``audit_side`` runs every attack on one model (membership inference, quantization, targeted and benign
relearning, adversarial probes), ``compare`` turns two sides into pass / fail per check, ``flat_metrics``
and ``format_report`` present the result. Pure torch: the pipeline (``unlearn audit``) loads the models,
trains and caches the reference and records the run.
"""

from unlearn_core.audit.report import flat_metrics, format_report, verdict_lines
from unlearn_core.audit.rows import AuditRows, select_audit_rows
from unlearn_core.audit.side import AUDIT_VERSION, CHECKS, AttackSettings, Progress, audit_side
from unlearn_core.audit.verdict import Thresholds, compare

__all__ = [
    "AUDIT_VERSION",
    "CHECKS",
    "AttackSettings",
    "AuditRows",
    "Progress",
    "Thresholds",
    "audit_side",
    "compare",
    "flat_metrics",
    "format_report",
    "select_audit_rows",
    "verdict_lines",
]

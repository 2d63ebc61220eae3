"""The method registry: one line per method (name -> ``module:Class``), importable without torch.

``unlearn_core.methods.METHODS`` loads the classes from here, so a new method is its own module plus
one line below. The command line checks a method name against these names before anything heavy is
imported (an unknown ``--method`` is refused in well under a second).
"""

from __future__ import annotations

from unlearn_core.config import ConfigError

METHOD_CLASSES: dict[str, str] = {
    "ga": "unlearn_core.methods.ga:GradientAscent",
    "grad_diff": "unlearn_core.methods.grad_diff:GradDiff",
    "kl": "unlearn_core.methods.kl:KLMin",
    "npo": "unlearn_core.methods.npo:NPO",
    "simnpo": "unlearn_core.methods.simnpo:SimNPO",
    "reject": "unlearn_core.methods.reject:Reject",
    "random": "unlearn_core.methods.random_label:RandomLabel",
    "mmunlearner": "unlearn_core.methods.mmunlearner:MMUnlearner",
    "pubg": "unlearn_core.methods.pubg:PUBG",
}


def method_key(name: str, field: str = "method.name") -> str:
    """The registry key of ``name`` (case and spaces ignored); ``ConfigError`` naming ``field`` if unknown."""
    key = name.strip().lower()
    if key not in METHOD_CLASSES:
        raise ConfigError(f"{field}: unknown method {name!r}; valid: {', '.join(sorted(METHOD_CLASSES))}")
    return key

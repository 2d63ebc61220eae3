"""Loaded by every Python process of a test pipeline (driver, Ray workers) through PYTHONPATH:
a DeprecationWarning (Ray's RayDeprecationWarning included) caused by a call made from our own code
(``pipelines``, ``unlearn_core``) becomes an error, and is also appended to ``$DEPRECATION_LOG``
(a worker's error might otherwise only show in its own log).

"Made from our code": the frame that called the function issuing the warning (deprecation
decorators, ``warnings`` and import machinery skipped) is in one of our packages. Deprecated calls
that a library makes on its own (Ray's Train calling Ray Data's deprecated options) are left alone.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

OURS = (f"{os.sep}pipelines{os.sep}", f"{os.sep}unlearn_core{os.sep}")
SKIP = (
    "warnings.py",
    "<frozen",
    f"ray{os.sep}util{os.sep}annotations.py",
    "typing_extensions.py",
    f"{os.sep}deprecated{os.sep}",
    "sitecustomize.py",
)
_show = warnings.showwarning


def _caller_is_ours() -> str | None:
    frames = [f for f in traceback.extract_stack() if not any(s in f.filename for s in SKIP)]
    # frames[-1] issued the warning; frames[-2] called it.
    if len(frames) >= 2 and any(o in frames[-2].filename for o in OURS):
        return "".join(traceback.format_list(frames[-6:]))
    return None


def _check(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, DeprecationWarning):
        where = _caller_is_ours()
        if where is not None:
            text = f"{category.__name__}: {message}\n{where}"
            if os.environ.get("DEPRECATION_LOG"):
                with open(os.environ["DEPRECATION_LOG"], "a") as f:
                    f.write(text + "\n---\n")
            raise DeprecationWarning(f"deprecated call from our code: {category.__name__}: {message}")
    return None  # other warnings: silent (the guard only judges ours)


warnings.simplefilter("always", DeprecationWarning)
warnings.showwarning = _check
sys.modules.setdefault("_unlearn_deprecation_guard", sys.modules[__name__])

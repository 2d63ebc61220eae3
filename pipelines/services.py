"""Services a command needs, checked before any work: the MLflow tracking server and the LLM judge.

A server that does not answer is reported within ``PROBE_TIMEOUT_S`` (connection, TLS and the first
byte of the reply together, name resolution included: the probe runs in a thread with a deadline),
with the URI and the fix, instead of MLflow's HTTP retries (minutes) or a judge call after the whole
generation. Any HTTP reply counts as an answer (a 404 or 401 too: the server is there; what it says
is the later call's business). Standard library only: no MLflow import, no Ray.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from unlearn_core.config import ConfigError

PROBE_TIMEOUT_S = 5.0  # default; UNLEARN_PROBE_TIMEOUT_S changes it


def probe_timeout() -> float:
    """Seconds a probe waits: ``$UNLEARN_PROBE_TIMEOUT_S``, else ``PROBE_TIMEOUT_S``."""
    raw = os.environ.get("UNLEARN_PROBE_TIMEOUT_S", "").strip()
    if not raw:
        return PROBE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 600:
        raise ConfigError(f"UNLEARN_PROBE_TIMEOUT_S={raw!r}: expected seconds in (0, 600]")
    return value


def tracking_uri(configured: str | None, workdir: str | Path) -> str:
    """The tracking URI a command uses (``tracking.resolve_tracking_uri``'s rule: the config's, else
    ``$MLFLOW_TRACKING_URI``, else the workdir's SQLite store), without creating anything."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(workdir).expanduser().resolve() / 'mlflow.db'}"


def no_answer(url: str, timeout_s: float | None = None) -> str | None:
    """None when ``url`` answers an HTTP GET within ``timeout_s`` (any status), else why not."""
    timeout_s = probe_timeout() if timeout_s is None else timeout_s
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout_s):
                pass
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered
        except urllib.error.URLError as err:
            reason = err.reason
            if type(reason).__module__ == "ssl":
                outcome.append(None)  # a TLS handshake: the server is there
            elif isinstance(reason, TimeoutError):
                outcome.append(f"no reply within {timeout_s:g} s")
            else:
                outcome.append(getattr(reason, "strerror", None) or str(reason))
        except TimeoutError:
            outcome.append(f"no reply within {timeout_s:g} s")
        except OSError as err:
            outcome.append(getattr(err, "strerror", None) or str(err) or type(err).__name__)
        except ValueError as err:  # not a URL urllib can open
            outcome.append(str(err))

    worker = threading.Thread(target=probe, name="unlearn-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive() or not outcome:
        return f"no reply within {timeout_s:g} s"
    return outcome[0]


def check_tracking(uri: str, field: str, timeout_s: float | None = None) -> None:
    """An ``http(s)://`` tracking server answers; a ``sqlite:///`` store is not a copy pointing into
    another folder (``store_paths.check_store``). Other schemes are left to MLflow."""
    if uri.startswith(("http://", "https://")):
        why = no_answer(uri.rstrip("/") + "/health", timeout_s)
        if why is not None:
            raise ConfigError(
                f"{field}: the MLflow tracking server {uri} does not answer ({why}); start it "
                f"(`mlflow server --host 0.0.0.0 --port PORT ...`) or point {field} at one that runs "
                "(unset MLFLOW_TRACKING_URI to use the workdir's own store, WORKDIR/mlflow.db)"
            )
    elif uri.startswith("sqlite:///"):
        from pipelines.store_paths import check_store

        check_store(Path(uri[len("sqlite:///") :]))


def check_judge(base_url: str, api_key_env: str | None, timeout_s: float | None = None) -> None:
    """The judge endpoint answers (``GET BASE/models``) and its API key variable is set."""
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"--judge-url: {base_url!r} is not an http(s):// URL (e.g. http://127.0.0.1:8000/v1)"
        )
    if api_key_env and not os.environ.get(api_key_env):
        raise ConfigError(
            f"--judge-key-env: the environment variable {api_key_env} (the judge's API key) is not set; "
            "set it, or pass --judge-key-env '' for an endpoint without a key"
        )
    why = no_answer(base_url.rstrip("/") + "/models", timeout_s)
    if why is not None:
        raise ConfigError(
            f"--judge-url: the judge endpoint {base_url} does not answer ({why}); start it or fix the URL "
            "(nothing was evaluated)"
        )

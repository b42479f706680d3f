"""Model URIs as local folders: a path as it is, or a download of ``runs:/``, ``models:/`` and other MLflow URIs.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flavorkit.errors import ModelSourceError
from flavorkit.settings import env_flag

__all__ = ["local_model"]


@contextmanager
def local_model(uri: str) -> Iterator[Path]:
    """A local folder holding the model at ``uri``; a download lives until the context ends.

    Used to check a model (``flavorkit verify``, ``flavorkit serve --trusted-key``) before any of
    its code runs, and then to load exactly the files that were checked.
    """
    local = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
    if local.exists():
        yield local
        return
    if "://" not in uri and ":/" not in uri:
        raise ModelSourceError(uri, "no such folder, and not a model URI (runs:/..., models:/...)")
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="flavorkit-model-") as tmp:
        _say(f"[flavorkit] Downloading {uri} ...")
        started = time.perf_counter()
        try:
            with _no_mlflow_progress_bar():
                path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise ModelSourceError(uri, f"cannot be downloaded: {exc}") from exc
        _say(f"[flavorkit] Downloading {uri}: done in {time.perf_counter() - started:.1f}s")
        yield Path(path)


def _say(line: str) -> None:
    """A progress line on stderr, unless ``FLAVORKIT_PROGRESS`` is off."""
    if env_flag("FLAVORKIT_PROGRESS"):
        print(line, file=sys.stderr, flush=True)


@contextmanager
def _no_mlflow_progress_bar() -> Iterator[None]:
    """Keep MLflow's per-file download bar (60 steps for a model) out of flavorkit's output.

    MLflow reads ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` at each download; a value the user set
    is kept. This runs while a model is checked or loaded, not while requests are served.
    """
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)

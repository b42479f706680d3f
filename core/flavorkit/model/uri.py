"""Model URIs as local folders: a path as it is, or a download of ``runs:/``, ``models:/`` and other MLflow URIs.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flavorkit.errors import ModelSourceError

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
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise ModelSourceError(uri, f"cannot be downloaded: {exc}") from exc
        yield Path(path)

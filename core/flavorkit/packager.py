"""The generic packager: any backend plus a model source becomes an MLflow pyfunc model.

Nothing here knows a backend by name. The backend supplies artifacts, requirements and metadata
through its hooks; the packager adds the contract (signature, input example, generation defaults),
the sha256 manifest and flavorkit's own code, then saves or logs the model with models-from-code.

Saving to ``path`` is atomic: the model is written to a hidden sibling directory and renamed into
place only when complete, so a failure or interrupt leaves nothing half-written, and an existing
model is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import flavorkit
from flavorkit.errors import FlavorkitError, InvalidRequest, PackagingError
from flavorkit.hookspec import SPEC_VERSION
from flavorkit.loading import MANIFEST_ARTIFACT
from flavorkit.manifest import build_manifest, write_manifest
from flavorkit.registry import Backend, get_backend
from flavorkit.requirements import core_requirements, merge_requirements
from flavorkit.schema import validate_generation_defaults
from flavorkit.signatures import CHAT, TASKS, input_example

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

__all__ = ["package"]

log = logging.getLogger(__name__)

_MODEL_FILE = Path(__file__).with_name("mlflow_model.py")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".mypy_cache", ".pytest_cache")


def package(
    model: Any,
    backend: str,
    *,
    path: str | os.PathLike[str] | None = None,
    task: str = CHAT,
    generation: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    registered_model_name: str | None = None,
    overwrite: bool = False,
    name: str = "model",
    model_name: str | None = None,
) -> ModelInfo:
    """Package ``model`` with ``backend`` as an MLflow pyfunc model and return its ``ModelInfo``.

    With ``path`` the model is saved to that directory; otherwise it is logged to the active MLflow
    run (one is started if none is active) under ``name``, and registered as
    ``registered_model_name`` when given. ``generation`` sets default generation settings
    (``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``n``, ``stop``, ``seed``) that each
    request may override; ``options`` are backend-specific (see ``flavorkit backends``).
    """
    be = get_backend(backend)
    if task not in TASKS:
        raise InvalidRequest("task", f"unknown task {task!r}", allowed=", ".join(TASKS))
    opts = be.validate_options(options)
    defaults = validate_generation_defaults(generation)
    if task != CHAT and defaults.get("n", 1) != 1:
        raise InvalidRequest("generation.n", f"{task} returns one string per prompt", allowed="1")
    signature = be.signature(task, opts)
    target = _check_target(path, overwrite, registered_model_name)

    with tempfile.TemporaryDirectory(prefix="flavorkit-package-") as work:
        workdir = Path(work)
        (workdir / "backend").mkdir()
        arts = be.artifacts(model, opts, str(workdir / "backend"))
        files = _check_artifact_files(be, arts.files, target)
        manifest_path = workdir / "manifest.json"
        write_manifest(build_manifest(files), manifest_path)
        config = _model_config(be, task, opts, defaults, arts.metadata, model_name or _default_name(model))
        kwargs: dict[str, Any] = {
            "python_model": str(_MODEL_FILE),
            "artifacts": {**files, MANIFEST_ARTIFACT: str(manifest_path)},
            "code_paths": _code_paths(be, workdir / "code"),
            "signature": signature,
            "input_example": input_example(task),
            "pip_requirements": merge_requirements(core_requirements(), arts.requirements),
            "metadata": {"flavorkit": {k: v for k, v in config.items() if k != "options"}},
            "model_config": config,
        }
        with _quiet_mlflow_env():
            if target is not None:
                return _save_atomically(target, overwrite, kwargs)
            return _log(name, registered_model_name, kwargs)


def _check_target(
    path: str | os.PathLike[str] | None, overwrite: bool, registered_model_name: str | None
) -> Path | None:
    if path is None:
        return None
    if registered_model_name:
        raise InvalidRequest(
            "registered_model_name",
            "registration needs the model logged to a run; omit path= to log and register it",
        )
    target = Path(path).expanduser().resolve()
    if not overwrite and _occupied(target):
        raise PackagingError(f"{target} already exists; pass overwrite=True to replace it")
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
    return target


def _occupied(target: Path) -> bool:
    """True when ``target`` is a file or a non-empty directory (an empty directory may be reused)."""
    return target.exists() and (target.is_file() or any(target.iterdir()))


def _check_artifact_files(be: Backend, files: Mapping[str, str], target: Path | None) -> dict[str, str]:
    checked = {}
    for key, location in files.items():
        if key == MANIFEST_ARTIFACT or not key.isidentifier():
            raise PackagingError(f"backend {be.name!r} returned an invalid artifact name {key!r}")
        path = Path(location)
        if not path.exists():
            raise PackagingError(f"backend {be.name!r} returned artifact {key!r} at {location}, which does not exist")
        if target is not None and path.is_dir() and target.parent.resolve().is_relative_to(path.resolve()):
            raise PackagingError(
                f"the output path {target} is inside the model files at {path}: the model would copy itself; "
                "choose a path outside the model source"
            )
        checked[key] = str(location)
    return checked


def _default_name(model: Any) -> str | None:
    """The source's folder name or Hub id; None for objects, so the backend's describe() names it."""
    if isinstance(model, (str, os.PathLike)):
        text = os.fspath(model).rstrip("/\\")
        return os.path.basename(text) if os.path.exists(text) else text
    return None


def _model_config(
    be: Backend,
    task: str,
    options: Mapping[str, Any],
    defaults: Mapping[str, Any],
    metadata: Mapping[str, Any],
    model_name: str | None,
) -> dict[str, Any]:
    return {
        "flavorkit_version": flavorkit.__version__,
        "spec_version": SPEC_VERSION,
        "backend": be.name,
        "plugin": {"object": be.object_path, "distribution": be.distribution, "version": be.version},
        "task": task,
        "model_name": model_name,
        "options": dict(options),
        "generation": dict(defaults),
        "backend_metadata": dict(metadata),
    }


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin) if spec.origin else None


def _code_paths(be: Backend, dest: Path) -> list[str]:
    """Copy flavorkit and the backend's top-level package, without caches, for ``code_paths``."""
    dest.mkdir()
    tops = ["flavorkit"]
    plugin_top = be.object_path.partition(":")[0].split(".")[0]
    if plugin_top not in tops:
        tops.append(plugin_top)
    out = []
    for top in tops:
        src = _package_dir(top)
        if src is None or src.name == "__main__.py":
            raise PackagingError(f"cannot ship the code of {top!r} (backend {be.name!r}): module not found on disk")
        if src.is_dir():
            shutil.copytree(src, dest / top, ignore=_IGNORE)
        else:
            shutil.copy2(src, dest / src.name)
        out.append(str(dest / (top if src.is_dir() else src.name)))
    return out


@contextmanager
def _quiet_mlflow_env() -> Iterator[None]:
    """Stop MLflow from copying a uv project found in the current directory into the model."""
    key = "MLFLOW_UV_AUTO_DETECT"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _save_atomically(target: Path, overwrite: bool, kwargs: dict[str, Any]) -> ModelInfo:
    import mlflow

    staging = target.parent / f".{target.name}.flavorkit-{uuid.uuid4().hex[:8]}"
    backup: Path | None = None
    try:
        mlflow.pyfunc.save_model(path=str(staging), **kwargs)
        _verify_saved(staging)
        if target.exists():
            if not overwrite and _occupied(target):
                raise PackagingError(f"{target} appeared while packaging; pass overwrite=True to replace it")
            backup = target.parent / f".{target.name}.flavorkit-old-{uuid.uuid4().hex[:8]}"
            os.replace(target, backup)
        try:
            os.replace(staging, target)
        except BaseException:
            if backup is not None:
                os.replace(backup, target)
                backup = None
            raise
    except FlavorkitError:
        raise
    except BaseException as exc:
        if isinstance(exc, Exception):
            raise PackagingError(f"saving the model to {target} failed: {exc}") from exc
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if backup is not None:
            if backup.is_dir() and not backup.is_symlink():
                shutil.rmtree(backup, ignore_errors=True)
            else:
                backup.unlink(missing_ok=True)
    return _local_model_info(target)


def _local_model_info(target: Path) -> ModelInfo:
    """A ModelInfo whose model_uri is the saved directory (MLflow's would read ``runs:/None/...``)."""
    from mlflow.models import Model
    from mlflow.models.model import ModelInfo

    model = Model.load(str(target))
    return ModelInfo(
        artifact_path=str(target),
        flavors=model.flavors,
        model_uri=str(target),
        model_uuid=model.model_uuid or "",
        run_id=None,  # type: ignore[arg-type]
        saved_input_example_info=model.saved_input_example_info,
        signature=model.signature,
        utc_time_created=model.utc_time_created,
        mlflow_version=model.mlflow_version or "",
        metadata=model.metadata,
    )


def _verify_saved(model_dir: Path) -> None:
    """Re-hash the copies MLflow made, so a bad copy fails packaging instead of the first load."""
    from mlflow.models import Model

    from flavorkit.manifest import read_manifest, verify_manifest

    conf = Model.load(str(model_dir)).flavors["python_function"]
    arts = {k: str(model_dir / v["path"]) for k, v in conf.get("artifacts", {}).items()}
    manifest = read_manifest(arts.pop(MANIFEST_ARTIFACT))
    verify_manifest(manifest, arts)


def _log(name: str, registered_model_name: str | None, kwargs: dict[str, Any]) -> ModelInfo:
    import mlflow
    from mlflow.models import Model

    def save_without_reload(path: str, mlflow_model: Any = None, **save_kwargs: Any) -> Any:
        save_kwargs.pop("validate_serving_input", None)
        saved = mlflow.pyfunc.save_model(path=path, mlflow_model=mlflow_model, **save_kwargs)
        _verify_saved(Path(path))  # before Model.log uploads the copies to the run
        return saved

    # Model.log with pyfunc's save_model, not pyfunc.log_model: the latter always reloads the model
    # in-process to check the input example, loading the weights a second time while packaging.
    flavor = SimpleNamespace(__name__="mlflow.pyfunc", save_model=save_without_reload)
    active = mlflow.active_run()
    started = active is None
    run = mlflow.start_run() if active is None else active
    status = "FAILED"
    try:
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=flavor,
            flavor_name="pyfunc.ModelFromCode",
            registered_model_name=registered_model_name,
            validate_serving_input=False,
            **kwargs,
        )
        status = "FINISHED"
    except FlavorkitError:
        raise
    except Exception as exc:
        raise PackagingError(f"logging the model to MLflow run {run.info.run_id} failed: {exc}") from exc
    finally:
        if started:
            mlflow.end_run(status)
    return info  # type: ignore[no-any-return]

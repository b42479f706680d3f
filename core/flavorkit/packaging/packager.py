"""The generic packager: any backend plus a model source becomes an MLflow pyfunc model.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

Nothing here knows a backend by name. The backend supplies artifacts, requirements and metadata
through its hooks; the packager adds the contract (signature, input example, generation defaults),
the typed configuration and what loading needs of flavorkit's own code, then saves or logs the
model with models-from-code. Right after MLflow has written the model folder, a post-save step
("sealing") writes the whole-model sha256 manifest and, with ``signing_key``, the signature; when
logging, that happens before the upload.

Saving to ``path`` is atomic: the model is written to a hidden sibling directory and renamed into
place only when complete, so a failure or interrupt leaves nothing half-written, and an existing
model is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from flavorkit._version import __version__
from flavorkit.backend.hookspec import SPEC_VERSION
from flavorkit.backend.registry import Backend, get_backend
from flavorkit.errors import FlavorkitError, IntegrityError, InvalidRequest, ModelSourceError, PackagingError
from flavorkit.model.config import FLAVOR_NAME, PROMPT_FORMATS, PackagedConfig, PluginRef
from flavorkit.model.loading import MANIFEST_ARTIFACT
from flavorkit.model.manifest import FileEntry, build_manifest, hash_files, write_manifest
from flavorkit.packaging.requirements import core_requirements, merge_requirements, pinned
from flavorkit.packaging.shipping import LOAD_ROOTS, imported_modules, shipped_files
from flavorkit.packaging.sources import check_links
from flavorkit.packaging.staging import current_stage, open_stage, reclaim
from flavorkit.schema import validate_generation_defaults
from flavorkit.settings import scoped_env
from flavorkit.signatures import CHAT, TASKS, input_example

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

    from flavorkit.model.signing import Signer

__all__ = ["package"]

log = logging.getLogger(__name__)

_MODEL_FILE = Path(__file__).parent.parent / "mlflow_model.py"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".mypy_cache", ".pytest_cache")
#: Set while MLflow saves a model: it copies no uv project found here into the model, and draws no
#: copy progress bars.
_QUIET_MLFLOW = {"MLFLOW_UV_AUTO_DETECT": "false", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
#: Parts of flavorkit that loading never imports, so they are not shipped in a model's ``code/``:
#: the packager, the CLI, the demo (the quickstart and the SmolLM2 builder), the Spark helper and the
#: conformance kit (with its test-model builders).


def package(
    model: Any,
    backend: str,
    *,
    path: str | os.PathLike[str] | None = None,
    task: str = CHAT,
    generation: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    registered_model_name: str | None = None,
    alias: str | None = None,
    overwrite: bool = False,
    name: str = "model",
    model_name: str | None = None,
    signing_key: str | os.PathLike[str] | None = None,
    prompt_format: str | None = None,
) -> ModelInfo:
    """Package ``model`` with ``backend`` as an MLflow pyfunc model and return its ``ModelInfo``.

    With ``path`` the model is saved to that directory; otherwise it is logged to the active MLflow
    run (one is started if none is active) under ``name``, and registered as
    ``registered_model_name`` when given, with ``alias`` (say ``"champion"``, loaded as
    ``models:/name@champion``) pointed at the new version. ``generation`` sets default generation settings
    (``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``n``, ``stop``, ``seed``) that each
    request may override; ``options`` are backend-specific (see ``flavorkit backends``).
    ``signing_key`` (an EC private key, PEM) signs the whole model with ``model-signing``
    (``pip install 'flavorkit[signing]'``) before it is moved into place or uploaded.

    ``prompt_format`` says how a ``text-generation`` prompt becomes token ids: ``"raw"`` (the
    default for that task) tokenizes it as plain text with the backend's ``encode_text`` hook and
    continues it exactly, as OpenAI's completions do; ``"chat_template"`` wraps it in the chat
    template as one user message, as flavorkit did before spec version 4. A chat model is always
    ``"chat_template"``.
    """
    be = get_backend(backend)
    if task not in TASKS:
        raise InvalidRequest("task", f"unknown task {task!r}", allowed=", ".join(TASKS))
    fmt = _prompt_format(be, task, prompt_format)
    opts = be.validate_options(options)
    defaults = validate_generation_defaults(generation)
    if task != CHAT and defaults.get("n", 1) != 1:
        raise InvalidRequest("generation.n", f"{task} returns one string per prompt", allowed="1")
    signature = be.signature(task, opts)
    target = _check_target(path, overwrite, registered_model_name)
    _check_alias(alias, registered_model_name)
    signer = _signer(signing_key)

    with open_stage(target) as stage:
        workdir = stage.work
        (workdir / "backend").mkdir()
        arts = be.artifacts(model, opts, str(workdir / "backend"), task)
        files = _check_artifact_files(be, arts.files, target)
        config = _model_config(be, task, opts, defaults, arts.metadata, model_name or _default_name(model), fmt)
        kwargs: dict[str, Any] = {
            "python_model": str(_MODEL_FILE),
            "artifacts": files,
            "code_paths": _code_paths(be, workdir / "code"),
            "signature": signature,
            "input_example": input_example(task),
            "pip_requirements": merge_requirements(
                core_requirements(), arts.requirements, [pinned(d) for d in signer.requirements] if signer else []
            ),
            "metadata": {"flavorkit": config.summary()},
            "model_config": config.to_model_config(),
        }
        seal = _Sealer(config, hash_files(files), signer)
        with scoped_env(_QUIET_MLFLOW):
            if target is not None:
                return _save_atomically(target, overwrite, lambda staging: seal.save(staging, kwargs))
            return _log(name, registered_model_name, kwargs, seal, alias)


#: MLflow's rule for alias names (``mlflow.utils.validation``), checked before any work is done.
_ALIAS = re.compile(r"[\w-]{1,255}")
_RESERVED_ALIAS = re.compile(r"v\d+|latest", re.IGNORECASE)


def _check_alias(alias: str | None, registered_model_name: str | None) -> None:
    """Refuse an alias that MLflow would refuse only after the upload, or one with nothing to point at."""
    if alias is None:
        return
    if not registered_model_name:
        raise InvalidRequest("alias", "an alias names a registered version; give registered_model_name too")
    allowed = "1 to 255 of letters, digits, _ and -, not 'latest' or v<number> (MLflow reserves those)"
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or _RESERVED_ALIAS.fullmatch(alias):
        raise InvalidRequest("alias", f"{alias!r} is not a valid alias", allowed=allowed)


def _prompt_format(be: Backend, task: str, prompt_format: str | None) -> str:
    """The packaged ``prompt_format``, checked before any conversion: raw text needs the ``encode_text`` hook."""
    if prompt_format is None:
        prompt_format = "chat_template" if task == CHAT else "raw"
    if prompt_format not in PROMPT_FORMATS:
        raise InvalidRequest(
            "prompt_format", f"unknown prompt format {prompt_format!r}", allowed=", ".join(PROMPT_FORMATS)
        )
    if task == CHAT and prompt_format != "chat_template":
        raise InvalidRequest(
            "prompt_format", "a chat model renders its messages with the chat template", allowed="chat_template"
        )
    if prompt_format == "raw" and not be.implements_encode_text:
        raise PackagingError(
            f"backend {be.name!r} does not implement the encode_text hook (spec version 4), which a text-generation "
            "model needs to tokenize its prompt as plain text; use a backend that implements it, or package with "
            "prompt_format='chat_template' (CLI: --prompt-format chat_template) to wrap each prompt in the model's "
            "chat template"
        )
    return prompt_format


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
    if target.parent.exists():
        reclaim(target.parent)  # a killed run's staging folders, and its previous model put back first
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
        if path.is_dir():
            try:  # a backend's artifact folder is packaged as is: nothing it links to outside it is copied
                check_links(path)
            except ModelSourceError as exc:
                raise PackagingError(f"backend {be.name!r} returned artifact {key!r} at {location}: {exc}") from None
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
    prompt_format: str,
) -> PackagedConfig:
    return PackagedConfig(
        flavorkit_version=__version__,
        spec_version=SPEC_VERSION,
        backend=be.name,
        plugin=PluginRef(object=be.object_path, distribution=be.distribution, version=be.version),
        task=task,  # type: ignore[arg-type]  # checked against TASKS above
        model_name=model_name,
        options=dict(options),
        generation=dict(defaults),
        backend_metadata=dict(metadata),
        prompt_format=prompt_format,  # type: ignore[arg-type]  # checked against PROMPT_FORMATS above
    )


def _signer(signing_key: str | os.PathLike[str] | None) -> Signer | None:
    """A :class:`flavorkit.model.signing.Signer` for ``signing_key`` (read now, so a bad key fails before any work)."""
    if signing_key is None:
        return None
    from flavorkit.model.signing import Signer

    return Signer(signing_key)


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin) if spec.origin else None


def _flavorkit_roots(plugin_src: Path | None) -> list[str]:
    """What loading a model runs of flavorkit: the models-from-code file and what the plugin imports of it."""
    roots = list(LOAD_ROOTS)
    if plugin_src is None:
        return roots
    files = sorted(plugin_src.rglob("*.py")) if plugin_src.is_dir() else [plugin_src]
    for file in files:
        parts = file.relative_to(plugin_src.parent).with_suffix("").parts
        roots.extend(imported_modules(file, ".".join(parts), "flavorkit"))
    return roots


def _ship_flavorkit(src: Path, dest: Path, roots: list[str]) -> None:
    """Copy the files of flavorkit that importing ``roots`` may run (see :mod:`flavorkit.packaging.shipping`)."""
    for rel in sorted(shipped_files(src, roots)):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)


def _code_paths(be: Backend, dest: Path) -> list[str]:
    """Copy what loading needs of flavorkit, and the backend's top-level package, for ``code_paths``."""
    dest.mkdir()
    plugin_top = be.object_path.partition(":")[0].split(".")[0]
    srcs: dict[str, Path] = {}
    for top in dict.fromkeys(("flavorkit", plugin_top)):
        src = _package_dir(top)
        if src is None or src.name == "__main__.py":
            raise PackagingError(f"cannot ship the code of {top!r} (backend {be.name!r}): module not found on disk")
        srcs[top] = src
    # A backend inside flavorkit's own package may import any of it, so flavorkit then ships whole.
    roots = None if plugin_top == "flavorkit" else _flavorkit_roots(srcs[plugin_top])
    out = []
    for top, src in srcs.items():
        target = dest / (top if src.is_dir() else src.name)
        if top == "flavorkit" and roots is not None:
            _ship_flavorkit(src, target, roots)
        elif src.is_dir():
            shutil.copytree(src, target, ignore=_IGNORE)
        else:
            shutil.copy2(src, target)
        out.append(str(target))
    return out


def _save_atomically(target: Path, overwrite: bool, save: Callable[[Path], None]) -> ModelInfo:
    """Save into the open staging folder, then swap it onto ``target`` with two renames.

    A previous model is first moved into the staging folder (``stage.backup``). Should the final
    rename fail, leaving the staging folder puts it back on ``target``; should the process die
    between the renames, the next call's ``reclaim`` does.
    """
    stage = current_stage()
    if stage.target != target:
        raise RuntimeError(f"the open staging folder is for {stage.target}, not {target}")
    try:
        save(stage.model)  # MLflow's save_model, then the post-save step (_Sealer)
        if os.path.lexists(target):
            if not overwrite and _occupied(target):
                raise PackagingError(f"{target} appeared while packaging; pass overwrite=True to replace it")
            os.replace(target, stage.backup)
        os.replace(stage.model, target)
    except FlavorkitError:
        raise
    except BaseException as exc:
        if isinstance(exc, Exception):
            raise PackagingError(f"saving the model to {target} failed: {exc}") from exc
        raise
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


class _Sealer:
    """The post-save step: flavorkit's flavor in MLmodel, the whole-model manifest, the signature."""

    def __init__(self, config: PackagedConfig, sources: Mapping[str, FileEntry], signer: Signer | None) -> None:
        self.config = config
        self.sources = sources  # artifact name/relative path -> digest, hashed from the backend's files
        self.signer = signer

    def save(self, path: Path, kwargs: Mapping[str, Any], mlflow_model: Any = None) -> None:
        """``mlflow.pyfunc.save_model`` into ``path`` (with the flavorkit flavor), then seal it."""
        import mlflow
        from mlflow.models import Model

        model = mlflow_model if mlflow_model is not None else Model()
        model.add_flavor(FLAVOR_NAME, **self.config.flavor())
        mlflow.pyfunc.save_model(path=str(path), mlflow_model=model, **kwargs)
        self.seal(Path(path))

    def seal(self, model_dir: Path) -> None:
        """Write the manifest of what MLflow saved, check MLflow's copies against the sources, sign."""
        from mlflow.models import Model

        # Byte-code of the shipped code is never shipped (as Model.log does); an artifact folder is
        # packaged as the backend returned it, caches included, so it is left alone.
        for cache in [model_dir / "__pycache__", *(model_dir / "code").rglob("__pycache__")]:
            shutil.rmtree(cache, ignore_errors=True)
        manifest = build_manifest(model_dir)
        arts = Model.load(str(model_dir)).flavors["python_function"].get("artifacts", {})
        bad = []
        for rel, entry in self.sources.items():
            name, _, inner = rel.partition("/")
            copied = f"{arts[name]['path']}/{inner}" if inner else arts[name]["path"]
            if manifest.files.get(copied) != entry:
                bad.append(f"{copied}: MLflow's copy differs from {name!r} as the backend returned it")
        if bad:
            raise IntegrityError(bad)
        write_manifest(manifest, model_dir)
        if self.signer is not None:
            self.signer.sign(model_dir)


def _set_alias(registered_model_name: str, alias: str, version: Any) -> None:
    """Point ``alias`` at the version just registered (moving it from an earlier version, as MLflow does)."""
    from mlflow import MlflowClient

    try:
        MlflowClient().set_registered_model_alias(registered_model_name, alias, str(version))
    except Exception as exc:
        raise PackagingError(
            f"{registered_model_name} version {version} was registered, but setting alias {alias!r} failed: {exc}"
        ) from exc


def _log(
    name: str, registered_model_name: str | None, kwargs: dict[str, Any], seal: _Sealer, alias: str | None = None
) -> ModelInfo:
    import mlflow
    from mlflow.models import Model

    def save_without_reload(path: str, mlflow_model: Any = None, **save_kwargs: Any) -> None:
        save_kwargs.pop("validate_serving_input", None)
        # Sealed here, in Model.log's local folder, before Model.log uploads it.
        seal.save(Path(path), save_kwargs, mlflow_model)

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
        if alias is not None and registered_model_name:
            _set_alias(registered_model_name, alias, info.registered_model_version)
        status = "FINISHED"
    except FlavorkitError:
        raise
    except Exception as exc:
        raise PackagingError(f"logging the model to MLflow run {run.info.run_id} failed: {exc}") from exc
    finally:
        if started:
            mlflow.end_run(status)
    return info  # type: ignore[no-any-return]

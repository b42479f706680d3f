"""The ``optimum-onnx`` backend: Optimum's ``ORTModelForCausalLM`` on ONNX Runtime.

Sources: a folder (or Hub repo) holding an Optimum ONNX export, or a transformers checkpoint that
is exported while packaging (cached by content, see :mod:`flavorkit_hf.export`). Decoding is the
engine shared with the ``transformers`` backend. This module is what the entry point names, so it
stays light: onnxruntime, optimum and torch are imported only inside hooks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from flavorkit.sdk import (
    Artifacts,
    GenerationSession,
    ModelDir,
    ModelSourceError,
    check_links,
    extra_requirements,
    hookimpl,
    installed_version,
    looks_like_hub_id,
    model_dir,
    pinned,
)
from flavorkit_hf.common import (
    CODE_SUFFIXES,
    WEIGHT_SUFFIXES,
    CommonOptions,
    HFBackendBase,
    check_remote_code,
    require_chat_template,
    resolve_source,
    stage_files,
)

__all__ = ["OptimumBackend", "OptimumOptions", "backend"]

#: What ORTModelForCausalLM imports to load and run a model, found by hiding each installed
#: distribution in turn: optimum-onnx and optimum, the ONNX Runtime build, onnx (imported by
#: optimum.exporters.onnx), transformers (config, tokenizer, GenerationMixin) and torch (its tensors).
#: accelerate, scipy, scikit-learn, pandas and Pillow are not needed.
RUNTIME = ("optimum-onnx", "optimum", "onnx", "transformers", "torch")
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def ort_distribution(provider: str | None = None) -> str:
    """The installed ONNX Runtime distribution to require: the GPU build for GPU providers when present."""
    if provider in _GPU_PROVIDERS and installed_version("onnxruntime-gpu") is not None:
        return "onnxruntime-gpu"
    if installed_version("onnxruntime") is not None:
        return "onnxruntime"
    return "onnxruntime-gpu" if installed_version("onnxruntime-gpu") is not None else "onnxruntime"


class OptimumOptions(CommonOptions):
    """Options of the ``optimum-onnx`` backend (``options=`` in :func:`flavorkit.package`)."""

    provider: str = Field(
        "CPUExecutionProvider", description="ONNX Runtime execution provider, e.g. 'CUDAExecutionProvider'."
    )
    provider_options: dict[str, str] = Field(
        default_factory=dict, description="Execution provider options, e.g. {'device_id': '0'}."
    )
    file_name: str | None = Field(None, description="Which .onnx file of the folder to load (default: model.onnx).")
    intra_op_num_threads: int | None = Field(
        None,
        ge=1,
        description="ONNX Runtime intra-op threads (default: every usable core, a container's CPU quota included). "
        "FLAVORKIT_THREADS (flavorkit serve --threads) overrides it.",
    )

    @field_validator("provider")
    @classmethod
    def _provider_name(cls, value: str) -> str:
        if not value.endswith("ExecutionProvider"):
            raise ValueError("expected an ONNX Runtime provider name such as 'CPUExecutionProvider'")
        return value


def _onnx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.onnx") if p.is_file())


def _check_export(folder: Path, options: Mapping[str, Any], *, read_graph: bool = True) -> dict[str, Any]:
    """Check an ONNX folder is a decoder export with past key values and a loadable tokenizer.

    ``read_graph=False`` skips parsing the ONNX file (for exports made here, known to have past inputs).
    """
    trust = bool(options.get("trust_remote_code", False))
    if not (folder / "config.json").is_file():
        genai = (folder / "genai_config.json").is_file()
        hint = " (an onnxruntime-genai model: use backend 'onnx-cpu')" if genai else ""
        raise ModelSourceError(folder, "ONNX files but no config.json: not an Optimum export" + hint)
    check_remote_code(folder, trust)
    files = _onnx_files(folder)
    wanted = options.get("file_name") or ("model.onnx" if (folder / "model.onnx").is_file() else None)
    if wanted is None and len(files) == 1:
        wanted = files[0].name
    if wanted is None or not (folder / wanted).is_file():
        raise ModelSourceError(
            folder, f"cannot tell which ONNX file to load ({', '.join(p.name for p in files)}); set options file_name"
        )
    info: dict[str, Any] = {"onnx_file": wanted}
    if read_graph:
        import onnx

        graph = onnx.load(str(folder / wanted), load_external_data=False).graph
        inputs = {i.name for i in graph.input}
        if not any(name.startswith("past_key_values") for name in inputs):
            raise ModelSourceError(
                folder / wanted,
                "the ONNX model has no past_key_values inputs; export it with task 'text-generation-with-past'",
            )
        info["position_ids"] = "position_ids" in inputs
    from flavorkit_hf.common import load_tokenizer

    load_tokenizer(folder, trust)
    return info


class OptimumBackend(HFBackendBase):
    """Optimum's ORTModelForCausalLM with the tokenizer's chat template."""

    @hookimpl
    def dependencies(self) -> Sequence[str]:
        """The ``flavorkit[optimum]`` extra (optimum-onnx's own transformers pin included) and the ONNX Runtime build.

        No optimum-onnx release supports transformers 5 (0.1.0 pins ``transformers<4.58``), so in an
        environment with transformers 5 this backend is listed as unavailable, naming that conflict.
        """
        return [*extra_requirements("optimum", fallback=RUNTIME), f"{ort_distribution()}>=1.18"]

    @hookimpl
    def option_schema(self) -> type[BaseModel]:
        """See :class:`OptimumOptions`."""
        return OptimumOptions

    @hookimpl
    def artifacts(self, source: Any, options: Mapping[str, Any], workdir: str, task: str) -> Artifacts:
        """An Optimum ONNX folder as is, or a transformers checkpoint exported to ONNX (cached).

        A chat model (``task``) needs a chat template; a text-generation one does not.
        """
        if not isinstance(source, (str, os.PathLike)):
            raise ModelSourceError(
                type(source).__name__,
                "the optimum-onnx backend takes a path or Hub id of an ONNX export or a transformers checkpoint",
            )
        trust = bool(options.get("trust_remote_code", False))
        found = resolve_source(source, options, weights=False)
        if not _onnx_files(found.path) and looks_like_hub_id(os.fspath(source)):
            found = resolve_source(source, options, weights=True)
        check_links(found)  # before onnx, transformers or the exporter read a file of it
        folder = found.path
        metadata: dict[str, Any] = {"provider": options.get("provider", "CPUExecutionProvider")}
        exported = False
        staged_from: ModelDir = found
        if not _onnx_files(folder):
            if not (folder / "config.json").is_file():
                raise ModelSourceError(folder, "neither ONNX files nor a transformers checkpoint (config.json) found")
            from flavorkit_hf.checkpoint import validate_checkpoint
            from flavorkit_hf.export import export_checkpoint

            info = validate_checkpoint(folder, trust_remote_code=trust)
            require_chat_template(folder, task, declared=info["chat_template"])  # before an export that would be wasted
            folder = export_checkpoint(found, trust_remote_code=trust)
            staged_from = model_dir(folder)
            metadata["exported_from"] = {k: info[k] for k in ("model_type", "architectures")}
            exported = True

        def keep(path: Path) -> bool:
            if path.suffix in WEIGHT_SUFFIXES:
                return False
            return trust or path.suffix not in CODE_SUFFIXES

        metadata.update(_check_export(folder, options, read_graph=not exported))
        if not exported:
            require_chat_template(folder, task, trust_remote_code=trust)
        staged = stage_files(staged_from, Path(workdir) / "model", keep)
        requirements = [pinned(ort_distribution(options.get("provider"))), *(pinned(d) for d in RUNTIME)]
        return Artifacts(files={"model": str(staged)}, requirements=requirements, metadata=metadata)

    @hookimpl
    def load(self, artifacts: Mapping[str, str], options: Mapping[str, Any]) -> Any:
        """Open the packaged export with ORTModelForCausalLM on the configured provider."""
        from flavorkit_hf.runtime import load_optimum

        return load_optimum(artifacts["model"], options)

    @hookimpl
    def generate_session(self, handle: Any) -> GenerationSession | None:
        """The engine's continuous-batching session (one live row at a time in ``"sequential"`` mode)."""
        return handle.session()  # type: ignore[no-any-return]


backend = OptimumBackend()

"""The plugin SDK: everything a backend plugin imports from flavorkit, in one declared module.

A backend plugin (first-party or third-party) imports from here and from :mod:`flavorkit.testing`
(the conformance kit), and from nowhere else in flavorkit. The names below are the SDK's contract:
``tests/backend/test_sdk.py`` pins ``__all__``, so adding or removing one is a deliberate, reviewed change.
Every other module of the package is internal and may change without notice.

Importing this module is cheap (no MLflow, torch or onnxruntime), because entry points import it
whenever backends are listed.
"""

from __future__ import annotations

from flavorkit.backend.handles import HandleHooks, RuntimeHandle
from flavorkit.backend.hookspec import SPEC_VERSION, hookimpl
from flavorkit.errors import (
    BackendError,
    BackendUnavailable,
    FlavorkitError,
    InvalidRequest,
    ModelConfigError,
    ModelSourceError,
    PackagingError,
    PluginSpecError,
)
from flavorkit.packaging.build import cached_build, tool_versions
from flavorkit.packaging.cache import build_scratch, cache_root, cached_dir, content_key, tree_digest
from flavorkit.packaging.progress import step
from flavorkit.packaging.requirements import extra_requirements, installed_version, pinned
from flavorkit.packaging.sources import (
    ModelDir,
    check_links,
    looks_like_hub_id,
    model_dir,
    resolve_model_dir,
    stage_tree,
)
from flavorkit.runtime.cost import CostModel
from flavorkit.runtime.guidance import (
    accept_tokens,
    guidance_tokenizer_from_file,
    guidance_tokenizer_from_hf,
    process_logits,
)
from flavorkit.runtime.interleave import InterleavedSession
from flavorkit.runtime.rows import ByteDecoder, NativeStream, TextStream, TokenRow, WindowDecoder
from flavorkit.settings import cpu_threads, usable_cores
from flavorkit.types import (
    Artifacts,
    Capability,
    Delta,
    GenerationRequest,
    GenerationSession,
    LogitsProcessor,
    Message,
    RuntimeInfo,
)

__all__ = [
    "Artifacts",
    "BackendError",
    "BackendUnavailable",
    "ByteDecoder",
    "Capability",
    "CostModel",
    "Delta",
    "FlavorkitError",
    "GenerationRequest",
    "GenerationSession",
    "HandleHooks",
    "InterleavedSession",
    "InvalidRequest",
    "LogitsProcessor",
    "Message",
    "ModelConfigError",
    "ModelDir",
    "ModelSourceError",
    "NativeStream",
    "PackagingError",
    "PluginSpecError",
    "RuntimeHandle",
    "RuntimeInfo",
    "SPEC_VERSION",
    "TextStream",
    "TokenRow",
    "WindowDecoder",
    "accept_tokens",
    "build_scratch",
    "cache_root",
    "cached_build",
    "cached_dir",
    "check_links",
    "content_key",
    "cpu_threads",
    "extra_requirements",
    "guidance_tokenizer_from_file",
    "guidance_tokenizer_from_hf",
    "hookimpl",
    "installed_version",
    "looks_like_hub_id",
    "model_dir",
    "pinned",
    "process_logits",
    "resolve_model_dir",
    "stage_tree",
    "step",
    "tool_versions",
    "tree_digest",
    "usable_cores",
]

"""The typed, versioned configuration a packaged model carries (MLmodel's pyfunc ``model_config``).

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

The packager writes a :class:`PackagedConfig`; the loader reads it back with
:meth:`PackagedConfig.from_model_config`, which validates the structure and the generation
defaults again, and :meth:`PackagedConfig.checked_options` validates the backend options with the
backend's own option schema. A bad value is a :class:`~flavorkit.errors.ModelConfigError` naming
the field (``generation.max_tokens``, ``options.batching``), never a runtime error from the backend.

``config_version`` changes whenever a field is added, removed or changes meaning. The loader
reads every version listed in :data:`READABLE_VERSIONS`, so a model keeps behaving as it did when it
was packaged:

- version 1 (flavorkit before spec version 4) has no ``prompt_format``: it reads as
  ``"chat_template"``, and a text-generation model keeps wrapping each prompt in the chat template;
- version 2 adds ``prompt_format``: ``"raw"`` (a text-generation prompt is tokenized as plain text
  by the backend's ``encode_text`` hook and continued exactly, the default when packaging for
  text-generation) or ``"chat_template"`` (the prompt as one user message through the chat
  template: what chat models always do, and version 1's text-generation behaviour).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from flavorkit.errors import InvalidRequest, ModelConfigError
from flavorkit.signatures import TASKS

if TYPE_CHECKING:
    from flavorkit.backend.registry import Backend

__all__ = ["CONFIG_VERSION", "FLAVOR_NAME", "PROMPT_FORMATS", "READABLE_VERSIONS", "PackagedConfig", "PluginRef"]

#: The version the packager writes.
CONFIG_VERSION: Literal[2] = 2
#: The versions the loader reads (see the module docstring for what each means).
READABLE_VERSIONS = (1, 2)
#: How a text-generation prompt becomes token ids: as plain text, or as one user message through the chat template.
PROMPT_FORMATS = ("raw", "chat_template")
PromptFormat = Literal["raw", "chat_template"]
#: The name of the flavor flavorkit adds to MLmodel, beside ``python_function``.
FLAVOR_NAME = "flavorkit"


class PluginRef(BaseModel):
    """Where the backend came from: its entry-point object and distribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    object: str
    distribution: str | None = None
    version: str | None = None


class PackagedConfig(BaseModel):
    """What the loader needs to rebuild a packaged model: backend, task, defaults and options."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    config_version: Literal[1, 2] = CONFIG_VERSION
    flavorkit_version: str
    spec_version: int
    backend: str
    plugin: PluginRef
    task: Literal["llm/v1/chat", "text-generation"]  # signatures.TASKS
    model_name: str | None = None
    options: dict[str, Any] = {}
    generation: dict[str, Any] = {}
    backend_metadata: dict[str, Any] = {}
    #: Version 2. Absent (version 1): ``"chat_template"``, the behaviour of flavorkit before spec version 4.
    prompt_format: PromptFormat = "chat_template"

    def to_model_config(self) -> dict[str, Any]:
        """The JSON-able dict stored as the pyfunc ``model_config``."""
        return self.model_dump(mode="json")

    def summary(self) -> dict[str, Any]:
        """The config without options, as recorded in MLmodel's ``metadata``."""
        return {k: v for k, v in self.to_model_config().items() if k != "options"}

    def flavor(self) -> dict[str, Any]:
        """The ``flavorkit`` flavor of MLmodel: what a model holds, for MLflow users and tools."""
        return {
            "backend": self.backend,
            "plugin_object": self.plugin.object,
            "plugin_distribution": self.plugin.distribution,
            "plugin_version": self.plugin.version,
            "flavorkit_version": self.flavorkit_version,
            "spec_version": self.spec_version,
            "config_version": self.config_version,
        }

    @classmethod
    def from_model_config(cls, raw: Mapping[str, Any] | None) -> PackagedConfig:
        """Parse and check a stored ``model_config``; :class:`ModelConfigError` names a bad field."""
        if not isinstance(raw, Mapping) or "backend" not in raw:
            raise ModelConfigError("backend", "missing: this is not a flavorkit model")
        version = raw.get("config_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise ModelConfigError(
                "config_version",
                f"{version!r} is not a configuration version this flavorkit reads; package the model again "
                "with this flavorkit, or load it with the flavorkit that packaged it",
                allowed=", ".join(str(v) for v in READABLE_VERSIONS),
            )
        if version == 1 and "prompt_format" in raw:
            raise ModelConfigError("prompt_format", "unknown field in a version 1 configuration (added in version 2)")
        if version >= 2 and "prompt_format" not in raw:
            raise ModelConfigError("prompt_format", "missing", allowed=", ".join(PROMPT_FORMATS))
        try:
            config = cls.model_validate(dict(raw))
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err["loc"]) or "model_config"
            if err["type"] == "extra_forbidden":
                raise ModelConfigError(field, "unknown field", allowed=", ".join(cls.model_fields)) from None
            if field == "task":
                raise ModelConfigError(field, f"unknown task {raw.get('task')!r}", allowed=", ".join(TASKS)) from None
            if field == "prompt_format":
                raise ModelConfigError(
                    field, f"unknown prompt format {raw.get('prompt_format')!r}", allowed=", ".join(PROMPT_FORMATS)
                ) from None
            raise ModelConfigError(field, err["msg"]) from None
        from flavorkit.schema import validate_generation_defaults

        try:
            generation = validate_generation_defaults(config.generation)
        except InvalidRequest as exc:
            raise ModelConfigError(exc.field, exc.detail, exc.allowed) from None
        if config.task == "llm/v1/chat" and config.prompt_format != "chat_template":
            raise ModelConfigError(
                "prompt_format", "a chat model renders its messages with the chat template", allowed="chat_template"
            )
        if config.task != "llm/v1/chat" and generation.get("n", 1) != 1:
            raise ModelConfigError("generation.n", f"{config.task} returns one string per prompt", allowed="1")
        return config.model_copy(update={"generation": generation})

    def checked_options(self, backend: Backend) -> dict[str, Any]:
        """The options validated with ``backend``'s option schema (fields ``options.*``)."""
        try:
            return backend.validate_options(self.options)
        except InvalidRequest as exc:
            raise ModelConfigError(exc.field, exc.detail, exc.allowed) from None

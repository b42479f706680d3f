"""Core default implementations of the optional hooks, registered last in every backend's manager.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

A backend's own implementation always runs first; for ``firstresult`` hooks the default only
answers when the backend has no implementation or returns None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from flavorkit.backend.hookspec import hookimpl
from flavorkit.types import Capability

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from pydantic import BaseModel


class CoreDefaults:
    """Fallbacks for the optional hooks of the spec."""

    @hookimpl(trylast=True)
    def capabilities(self) -> Iterable[Capability | str]:
        """A backend that declares nothing is assumed to stream and decode greedily only."""
        return (Capability.STREAMING,)

    @hookimpl(trylast=True)
    def option_schema(self) -> type[BaseModel] | None:
        """No options unless the backend describes them."""
        return None

    @hookimpl(trylast=True)
    def signature(self, task: str, options: Mapping[str, Any]) -> ModelSignature | None:
        """The standard signature of the core tasks."""
        from flavorkit.signatures import standard_signature

        return standard_signature(task)

    @hookimpl(trylast=True)
    def unload(self, handle: Any) -> None:
        """Nothing to release by default; the handle is garbage collected."""
        return None

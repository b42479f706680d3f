"""The :class:`Harness`: one backend and one model source, packaged once, with helpers the clauses share.

Internal: not part of the plugin SDK; the kit's public names are in :mod:`flavorkit.testing`.

Everything is built lazily and at most once per test class: the backend from the registry, the
packaged model (from a private copy of a local source, deleted once packaged, so a model that
still reads its source fails), the raw handle loaded from the packaged artifacts, and the pyfunc
model. A failure while building one of them is remembered, so every clause that needs it fails
with the same message instead of retrying.

Raw calls go through :class:`flavorkit.backend.registry.Backend` (the hooks, with only the registry's type
checks) and never through :class:`flavorkit.runtime.loaded.LoadedModel`, which repairs some mistakes (it
cuts output past ``max_tokens``, for instance) and would hide them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flavorkit.backend.registry import Backend, get_registry
from flavorkit.signatures import CHAT
from flavorkit.types import Artifacts, Capability, GenerationRequest, Message, RuntimeInfo, close_stream

if TYPE_CHECKING:
    from flavorkit.runtime.loaded import LoadedModel

__all__ = ["PROMPTS", "ClauseFailed", "Generated", "Harness", "Probe", "check"]

T = TypeVar("T")

#: Chat prompts the kit tries, in order, until the model's greedy answer is long enough to test with.
PROMPTS: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "Write one sentence about packaging language models."},),
    ({"role": "user", "content": "What is the capital of Spain?"},),
    (
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Count from one to ten, please."},
    ),
    ({"role": "user", "content": "Hello! Tell me a short story."},),
)
#: Tokens asked for in the kit's reference generations.
PROBE_TOKENS = 16
#: The shortest greedy answer (in characters) the kit can test stop strings and prefixes with.
MIN_PROBE_CHARS = 6
#: A generate() call that yields more deltas than this is treated as never ending.
MAX_DELTAS = 20_000


class ClauseFailed(AssertionError):
    """A conformance clause does not hold; the message says what was observed and what was expected."""


def check(condition: object, message: str) -> None:
    """Raise :class:`ClauseFailed` with ``message`` unless ``condition`` is true."""
    if not condition:
        raise ClauseFailed(message)


class SetupFailed(RuntimeError):
    """Building something a clause needs (packaging, loading) failed earlier in this class."""


def _once(fn: Callable[[Harness], T]) -> Callable[[Harness], T]:
    """Cache a harness method's result, or its exception, for the harness' lifetime."""
    key = fn.__name__

    @wraps(fn)
    def wrapper(self: Harness) -> T:
        if key not in self._memo:
            try:
                self._memo[key] = (True, fn(self))
            except Exception as exc:
                self._memo[key] = (False, exc)
        ok, value = self._memo[key]
        if ok:
            return value  # type: ignore[no-any-return]
        if isinstance(value, SetupFailed):
            raise value
        raise SetupFailed(f"{key.replace('_', ' ')} failed: {type(value).__name__}: {value}") from value

    return wrapper


@dataclass
class Generated:
    """What one request of a raw ``generate`` call produced, as the kit observed it."""

    index: int
    text: str = ""
    tokens: int = 0
    deltas: int = 0
    text_deltas: int = 0
    finish: str | None = None
    finishes: int = 0
    after_finish: int = 0
    after_cancel: int = 0
    positions: list[int] = field(default_factory=list)
    bad_tokens: list[Any] = field(default_factory=list)

    def same_as(self, other: Generated) -> bool:
        """True when text, token count and finish reason are all equal."""
        return (self.text, self.tokens, self.finish) == (other.text, other.tokens, other.finish)

    def describe(self) -> str:
        """A short human-readable summary for failure messages."""
        return f"{self.text!r} ({self.tokens} tokens, finish_reason={self.finish!r})"


@dataclass(frozen=True)
class Probe:
    """The prompt the kit tests with and the model's greedy answer to it (``PROBE_TOKENS`` tokens)."""

    messages: tuple[Message, ...]
    answer: Generated
    other: tuple[Message, ...]


class Harness:
    """Lazily built backend, packaged model, raw handle and pyfunc model for one conformance class."""

    def __init__(
        self,
        backend_name: str,
        source: Any,
        workdir: Path,
        *,
        options: Mapping[str, Any] | None = None,
        isolate_source: bool = True,
    ) -> None:
        self.backend_name = backend_name
        self.source = source
        self.workdir = Path(workdir)
        self.raw_options = dict(options or {})
        self.isolate_source = isolate_source
        self._memo: dict[str, tuple[bool, Any]] = {}
        self._packaged: dict[str, Path] = {}
        self._closers: list[Callable[[], None]] = []

    # -- the backend ----------------------------------------------------------------------------

    @_once
    def backend(self) -> Backend:
        """The backend from the registry (rescanning entry points once if it is not known yet)."""
        registry = get_registry()
        if self.backend_name not in registry.names():
            registry = get_registry(refresh=True)
        return registry.get(self.backend_name)

    @_once
    def capabilities(self) -> frozenset[Capability]:
        """The capabilities the backend declares for the suite's options."""
        return self.backend().capabilities(self.options())

    @_once
    def options(self) -> dict[str, Any]:
        """The suite's options after validation by the backend's option schema."""
        return self.backend().validate_options(self.raw_options)

    @_once
    def raw_artifacts(self) -> Artifacts:
        """The backend's ``artifacts`` hook called directly on the model source."""
        workdir = self.workdir / "raw-artifacts"
        workdir.mkdir(exist_ok=True)
        return self.backend().artifacts(self.source, self.options(), str(workdir))

    # -- packaging and loading ------------------------------------------------------------------

    def packaged(self, task: str = CHAT) -> Path:
        """The model packaged for ``task`` with :func:`flavorkit.package` (built once per task)."""
        if task not in self._packaged:
            key = f"package {task}"
            if key in self._memo:
                ok, value = self._memo[key]
                if not ok:
                    raise SetupFailed(f"packaging for {task} failed: {type(value).__name__}: {value}") from value
            try:
                self._packaged[task] = self._package(task)
            except Exception as exc:
                self._memo[key] = (False, exc)
                raise SetupFailed(f"packaging for {task} failed: {type(exc).__name__}: {exc}") from exc
        return self._packaged[task]

    def _package(self, task: str) -> Path:
        import flavorkit

        slug = "".join(c if c.isalnum() else "-" for c in task)
        target = self.workdir / f"packaged-{slug}"
        source = self.source
        copy_root: Path | None = None
        if self.isolate_source and isinstance(source, (str, os.PathLike)) and Path(source).exists():
            # Package from a private copy and delete it afterwards: the packaged model must not
            # depend on its source still being there.
            original = Path(source).resolve()
            copy_root = self.workdir / f"source-{slug}"
            copy = copy_root / original.name
            copy_root.mkdir()
            if original.is_dir():
                shutil.copytree(original, copy, symlinks=False)
            else:
                shutil.copy2(original, copy)
            source = str(copy)
        try:
            flavorkit.package(model=source, backend=self.backend_name, path=target, task=task, options=self.raw_options)
        finally:
            if copy_root is not None:
                shutil.rmtree(copy_root, ignore_errors=True)
        return target

    def packaged_artifacts(self, task: str = CHAT) -> dict[str, str]:
        """Artifact name -> path inside the packaged model, the manifest included."""
        from mlflow.models import Model

        path = self.packaged(task)
        conf = Model.load(str(path)).flavors["python_function"]
        return {k: str(path / v["path"]) for k, v in conf.get("artifacts", {}).items()}

    @_once
    def handle(self) -> Any:
        """A raw handle: the backend's ``load`` hook on the packaged chat model's artifacts."""
        from flavorkit.model.loading import MANIFEST_ARTIFACT

        files = {k: v for k, v in self.packaged_artifacts().items() if k != MANIFEST_ARTIFACT}
        backend = self.backend()
        handle = backend.load(files, self.options())
        self._closers.append(lambda: backend.unload(handle))
        return handle

    @_once
    def info(self) -> RuntimeInfo:
        """The backend's ``describe`` of the raw handle."""
        return self.backend().describe(self.handle())

    @_once
    def guidance_tokenizer(self) -> Any:
        """The backend's ``guidance_tokenizer`` hook on the raw handle (spec version 3), built once."""
        return self.backend().guidance_tokenizer(self.handle())

    @_once
    def special_tokens(self) -> dict[str, str]:
        """Special-token text -> where the model declares it: its packaged artifacts' and source's tokenizer files.

        Falls back to :data:`flavorkit.testing._special.WELL_KNOWN` (marked ``"well-known"``) when
        no tokenizer file the kit can read declares any.
        """
        from flavorkit.model.loading import MANIFEST_ARTIFACT
        from flavorkit.testing._special import WELL_KNOWN, special_tokens

        roots = [p for k, p in self.packaged_artifacts().items() if k != MANIFEST_ARTIFACT]
        if isinstance(self.source, (str, os.PathLike)):
            roots.append(os.fspath(self.source))
        return special_tokens(roots) or dict.fromkeys(WELL_KNOWN, "well-known")

    @_once
    def model(self) -> LoadedModel:
        """The core runtime around the raw handle (chat task, no packaged defaults)."""
        from flavorkit.runtime.loaded import LoadedModel

        return LoadedModel(self.backend(), self.handle(), task=CHAT, options=self.options())

    @_once
    def pyfunc(self) -> Any:
        """The packaged chat model loaded with ``mlflow.pyfunc.load_model``."""
        import mlflow

        return mlflow.pyfunc.load_model(str(self.packaged()))

    # -- raw generation -------------------------------------------------------------------------

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """The backend's ``encode`` hook on the raw handle."""
        return self.backend().encode(self.handle(), list(messages))

    def request(self, messages: Sequence[Message], max_tokens: int, **settings: Any) -> GenerationRequest:
        """A raw request (greedy unless ``temperature`` is given) for ``messages``."""
        return GenerationRequest(prompt_ids=self.encode(messages), max_tokens=max_tokens, **settings)

    def run(self, requests: Sequence[GenerationRequest], *, cancel: Mapping[int, int] | None = None) -> list[Generated]:
        """Call the backend's ``generate`` hook and record every delta, per request.

        ``cancel`` maps a request index to a number of deltas: once that request has produced so
        many, its ``cancelled`` flag is set, as the core does when a stop string matches.
        """
        results = [Generated(i) for i in range(len(requests))]
        cancel = dict(cancel or {})
        stream = self.backend().generate(self.handle(), requests)
        try:
            for position, delta in enumerate(stream):
                if position >= MAX_DELTAS:
                    raise ClauseFailed(
                        f"generate() yielded more than {MAX_DELTAS} deltas for {len(requests)} request(s) "
                        f"with max_tokens {[r.max_tokens for r in requests]}: it does not stop"
                    )
                res = results[delta.index]
                if requests[delta.index].cancelled:
                    res.after_cancel += 1
                if res.finishes:
                    res.after_finish += 1
                res.deltas += 1
                res.positions.append(position)
                res.text += delta.text
                if delta.text:
                    res.text_deltas += 1
                if isinstance(delta.tokens, int) and not isinstance(delta.tokens, bool) and delta.tokens >= 0:
                    res.tokens += delta.tokens
                else:
                    res.bad_tokens.append(delta.tokens)
                if delta.finish_reason is not None:
                    res.finishes += 1
                    if res.finish is None:
                        res.finish = delta.finish_reason
                limit = cancel.get(delta.index)
                if limit is not None and res.deltas >= limit:
                    requests[delta.index].cancelled = True
        finally:
            close_stream(stream)
        return results

    def greedy(self, messages: Sequence[Message], max_tokens: int) -> Generated:
        """One greedy request run alone."""
        return self.run([self.request(messages, max_tokens)])[0]

    @_once
    def probe(self) -> Probe:
        """The first of :data:`PROMPTS` whose greedy answer is long enough to test with."""
        answers = []
        for messages in PROMPTS:
            answer = self.greedy(messages, PROBE_TOKENS)
            answers.append(answer)
            if len(answer.text) >= MIN_PROBE_CHARS:
                other = next(m for m in PROMPTS if m is not messages)
                return Probe(messages=messages, answer=answer, other=other)
        seen = "; ".join(a.describe() for a in answers)
        raise ClauseFailed(
            f"the model's greedy answers to the kit's {len(PROMPTS)} prompts are all shorter than "
            f"{MIN_PROBE_CHARS} characters ({seen}); use a model source that writes a few words"
        )

    # -- chat requests through the packaged model -----------------------------------------------

    def chat(self, messages: Sequence[Message], **settings: Any) -> dict[str, Any]:
        """A chat request dict for the pyfunc model (greedy unless ``temperature`` is given)."""
        return {"messages": [dict(m) for m in messages], "temperature": 0.0, **settings}

    def predict(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``pyfunc.predict`` of one chat request; returns the single response dict."""
        out = self.pyfunc().predict(dict(request))
        check(
            isinstance(out, list) and len(out) == 1 and isinstance(out[0], dict),
            f"predict() of one chat request must return a list with one response dict, got {out!r:.200}",
        )
        return out[0]  # type: ignore[no-any-return]

    def summary(self) -> dict[str, Any]:
        """Backend facts for the report: id, distribution, version, plugin object, capabilities, model."""
        source = self.source
        facts: dict[str, Any] = {
            "name": self.backend_name,
            "distribution": None,
            "version": None,
            "object": None,
            "capabilities": None,
            "model": os.fspath(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__,
        }
        try:
            backend = self.backend()
            facts.update(
                distribution=backend.distribution,
                version=backend.version,
                object=backend.object_path,
                capabilities=sorted(c.value for c in self.capabilities()),
            )
        except Exception:  # a backend that does not load is reported by the clauses themselves
            pass
        return facts

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Unload raw handles and drop loaded models."""
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):  # unloading is best effort at teardown
                closer()
        self._closers.clear()
        self._memo.clear()


def content(response: Mapping[str, Any], index: int = 0) -> str:
    """The message content of choice ``index`` of a chat completion."""
    return str(response["choices"][index]["message"]["content"])

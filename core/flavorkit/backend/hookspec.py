"""The ``WrapperBackend`` hook specification: the whole contract between flavorkit and a backend.

Internal: not part of the plugin SDK; import :data:`hookimpl` and ``SPEC_VERSION`` from :mod:`flavorkit.sdk`.

Each hook's docstring is its specification. A backend is any object (a module, a class instance)
with functions marked by :data:`flavorkit.hookimpl` whose names match hooks below; it is registered
through an entry point in the ``flavorkit.backends`` group. A backend implements only the hooks it
needs: the core supplies defaults for the optional ones (see :mod:`flavorkit.backend.defaults`).

Required hooks: :meth:`~WrapperBackend.dependencies`, :meth:`~WrapperBackend.artifacts`,
:meth:`~WrapperBackend.load`, :meth:`~WrapperBackend.describe`, :meth:`~WrapperBackend.encode`
and :meth:`~WrapperBackend.generate`.

Evolving the spec: new keyword arguments and new hooks may be added; an argument is never renamed
or removed (pluggy passes a hookimpl only the arguments it names, so old plugins keep working).
The version is :data:`SPEC_VERSION`.

Rules that span several hooks are stated where they bite:

- threads, and streams abandoned part-way: :meth:`~WrapperBackend.generate`;
- the seeds of the ``n`` choices of a request: :meth:`~WrapperBackend.generate`;
- an incomplete UTF-8 sequence at the end of an answer: :meth:`~WrapperBackend.generate`;
- which message fields reach the backend: :meth:`~WrapperBackend.encode`;
- guided decoding (a grammar's logits mask): :class:`~flavorkit.types.LogitsProcessor` and
  :meth:`~WrapperBackend.guidance_tokenizer`;
- batch invariance (greedy answers independent of the batch), and what holds for seeded
  sampling: :meth:`~WrapperBackend.capabilities`;
- a model without a chat template: :meth:`~WrapperBackend.artifacts` and :meth:`~WrapperBackend.encode`;
- a ``text-generation`` prompt (plain text, no chat template): :meth:`~WrapperBackend.encode_text`;
- ``artifacts`` called more than once for one source: :meth:`~WrapperBackend.artifacts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from flavorkit.types import (
    Artifacts,
    Capability,
    Delta,
    GenerationRequest,
    GenerationSession,
    Message,
    RuntimeInfo,
)

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from pydantic import BaseModel

__all__ = ["PROJECT", "REQUIRED_HOOKS", "SPEC_VERSION", "WrapperBackend", "hookimpl", "hookspec"]

#: The pluggy project name shared by the spec and every implementation.
PROJECT = "flavorkit"
#: Version of this hook specification; bumped when hooks or arguments are added.
SPEC_VERSION = 5

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a function as the implementation of a :class:`WrapperBackend` hook.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hooks every backend must implement itself; the registry rejects a backend that lacks one.
REQUIRED_HOOKS = ("dependencies", "artifacts", "load", "describe", "encode", "generate")


class WrapperBackend:
    """The contract every flavorkit backend implements."""

    @hookspec(firstresult=True)
    def dependencies(self) -> Sequence[str]:  # type: ignore[empty-body]
        """Return the PEP 508 requirements the backend needs at run time, e.g. ``["onnxruntime-genai>=0.15"]``.

        Called when listing backends, so it must not import those dependencies: the core checks
        them against the installed distributions and reports the exact ``pip install`` hint.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def capabilities(self, options: Mapping[str, Any] | None) -> Iterable[Capability | str]:  # type: ignore[empty-body]
        """Return the optional :class:`~flavorkit.types.Capability` values the backend supports.

        For a backend without ``sampling`` the core serves an omitted temperature as 0 (greedy)
        instead of 1.0 and rejects a temperature above 0, so :meth:`generate` sees only greedy
        requests. The conformance kit skips the clauses of capabilities a backend lacks. Default:
        ``streaming`` only.

        **Options** (spec version 5). ``options`` is the backend's options for the model at hand,
        validated by :meth:`option_schema` (defaults filled in), or None where there is no model
        (``flavorkit backends`` lists what the default options give). Declare a capability only
        when these options keep it: ``batch_invariant`` in particular is the promise of a batching
        mode (exact, sequential), not of the faster ones. A hook that does not name ``options``
        answers for every option alike, as before spec 5.

        **Batch invariance** (``batch_invariant``, spec version 5): with greedy decoding a
        request's answer is exactly its answer alone (batch size 1), whatever shares its batch in
        :meth:`generate` or its :meth:`generate_session` session: other prompts, short or long,
        rows that join mid-way, finish early or are cancelled. A padded batch rarely computes the
        same bits as one row (other kernel paths, other matmul shapes), and where two tokens nearly
        tie that changes the answer, so a backend that declares it decodes greedy rows alone
        wherever it cannot show that batched logits equal the single-row ones (a bitwise probe on
        this machine, or a near-tie check that replays the row alone). Seeded sampling is best
        effort across batches, as OpenAI's ``seed``: the same seed and request repeat alone; in
        another batch they usually do, but may not. The conformance kit's ``batch_invariant``
        clause checks the greedy promise on prompts of 60 tokens and more.

        .. versionadded:: 1
        .. versionchanged:: 5 the ``options`` argument, and the ``batch_invariant`` capability.
        """

    @hookspec(firstresult=True)
    def option_schema(self) -> type[BaseModel] | None:  # type: ignore[empty-body]
        """Return a pydantic model describing the backend's ``options``, or None for no options.

        The core validates user options with it before any other hook sees them, so unknown keys
        and bad values fail early with the field name. Hooks receive the validated options as a
        plain ``dict``. Default: no options are accepted.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def artifacts(self, source: Any, options: Mapping[str, Any], workdir: str, task: str) -> Artifacts:  # type: ignore[empty-body]
        """Resolve a model source into the files to package, the pinned requirements and metadata.

        ``source`` is what the user passed as ``model=``: a local path, a Hub id, or an in-memory
        object the backend understands. Conversions (export, quantisation) happen here; scratch
        output goes under ``workdir``, which the packager deletes afterwards. Requirements must be
        minimal and pinned, e.g. via :func:`flavorkit.packaging.requirements.pinned`. Raise
        :class:`~flavorkit.errors.ModelSourceError` naming the path when the source is unusable.

        **Called more than once.** Expect several calls for one model: packaging for each task,
        ``flavorkit check``, and the conformance kit, which packages from a fresh temporary copy
        of a local source each time (so the same files arrive under a new path). A conversion
        cache must therefore be keyed by the content of the source (and the options), never by
        its path, or every call converts again (``tree_digest``, ``content_key`` and ``cached_dir``
        of :mod:`flavorkit.sdk` do this). Each call returns files that stay valid until the
        packager has copied them.

        **No chat template, no chat package.** ``task`` (spec version 4) is the task being
        packaged, ``"llm/v1/chat"`` or ``"text-generation"``. The core serves chat messages through
        :meth:`encode`, which renders them with the model's own chat template only, so for
        ``"llm/v1/chat"`` a source whose tokenizer has no chat template is refused here, before
        any conversion where the backend can tell, with a ``ModelSourceError`` that names
        ``chat_template`` and says how to fix it (use an instruction-tuned model, or add the
        template to the tokenizer files). A ``text-generation`` prompt is plain text
        (:meth:`encode_text`), so a base model without a template is accepted for that task. A
        backend written before spec 4 does not name ``task`` and refuses for both tasks, as before.

        .. versionadded:: 1
        .. versionchanged:: 4 the ``task`` argument.
        """

    @hookspec(firstresult=True)
    def signature(self, task: str, options: Mapping[str, Any]) -> ModelSignature | None:  # type: ignore[empty-body]
        """Return the MLflow ``ModelSignature`` for ``task``, or None to use the core's standard one.

        ``task`` is one of the core tasks (``"llm/v1/chat"``, ``"text-generation"``); the core
        serves only those. Override to narrow or document the standard signature, for instance
        when a backend cannot honour one of its optional fields.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def load(self, artifacts: Mapping[str, str], options: Mapping[str, Any]) -> Any:
        """Load the runtime from the packaged artifact paths and return an opaque handle.

        ``artifacts`` maps the names returned by :meth:`artifacts` to their paths inside the
        packaged model. Heavy imports belong here, not at module import time.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def describe(self, handle: Any) -> RuntimeInfo:  # type: ignore[empty-body]
        """Return the :class:`~flavorkit.types.RuntimeInfo` (context length, model name) of a handle.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def encode(  # type: ignore[empty-body]
        self, handle: Any, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None
    ) -> list[int]:
        """Apply the model's chat template to ``messages`` and return the prompt token ids.

        Includes the generation prompt (the assistant turn opener). The core counts
        ``prompt_tokens`` from this and rejects prompts that do not fit the context.

        **Message fields.** Each message is a ``dict`` with exactly two keys, ``"role"``
        (``"system"``, ``"user"`` or ``"assistant"``) and ``"content"`` (a string), already
        validated. A request's optional ``name`` field is accepted for OpenAI compatibility but is
        never passed to the backend, so no template renders it. A ``text-generation`` prompt
        reaches :meth:`encode_text` instead, as plain text; only a model packaged before spec
        version 4 (``prompt_format: chat_template`` in its configuration) still sends it here, as
        one user message.

        **Always the model's template.** Render the model's own chat template, with every message
        (system messages and earlier turns included); never fall back to joining the contents.
        A handle without a template raises :class:`~flavorkit.errors.BackendError` saying so
        (:meth:`artifacts` refuses such a model in the first place). A template that refuses a
        conversation (a Jinja ``raise_exception``) may raise its own error: the core reports it
        as an invalid request naming ``messages``.

        ``encode`` may be called while a :meth:`generate` stream of the same handle is open
        (between two of its steps, from another thread), but never at the same time as another
        call into the handle; see :meth:`generate`.

        **Tools** (spec version 3). ``tools`` is None, or the request's OpenAI tool list
        (``[{"type": "function", "function": {"name", "description", "parameters"}}]``) when the
        core wants the model's own template to render them (Hugging Face's ``tools=`` argument of
        ``apply_chat_template``). Only then may messages carry more than role and content: an
        assistant message ``tool_calls`` (``[{"id", "type": "function", "function": {"name",
        "arguments": <dict>}}]``, content possibly empty) and a ``tool`` message ``tool_call_id``.
        The core probes once per model whether the template renders ``tools`` (the prompt
        changes); where it does not, or the backend does not take the argument, it uses its
        generic form instead: the tools described in a system message, calls and results as plain
        text, so a backend need not implement ``tools`` at all.

        .. versionadded:: 1
        .. versionchanged:: 3 the ``tools`` argument.
        """

    @hookspec(firstresult=True)
    def encode_text(self, handle: Any, text: str) -> list[int] | None:
        """Tokenize plain ``text``, with no chat template, into the prompt ids of a ``text-generation`` request.

        ``text-generation`` (pyfunc ``{"prompt": ...}``, ``/v1/completions``) continues the prompt
        exactly as given, as OpenAI's completions and vLLM do: a prompt that already holds a chat
        template's markers is not templated a second time. Tokenize as the tokenizer does by
        default: the beginning-of-sequence token when the tokenizer adds one (Hugging Face's
        ``tokenizer(text)["input_ids"]``, onnxruntime-genai's ``tokenizer.encode(text)``, llama.cpp's
        ``tokenize(text, add_bos=<the model's add_bos_token>, special=True)``), special tokens
        written in the text parsed as special tokens, nothing appended. The core counts
        ``prompt_tokens`` from the ids and rejects a prompt that does not fit the context.

        Required for a ``text-generation`` model packaged with ``prompt_format="raw"`` (the
        default from spec version 4): packaging refuses such a model when the backend has no
        implementation, and loading refuses it when this hook returns None (the default, and what
        :class:`~flavorkit.backend.handles.HandleHooks` returns for a handle without an
        ``encode_text`` method), each with an error naming ``encode_text``. The threading rule
        of :meth:`encode` applies.

        .. versionadded:: 4
        """

    @hookspec(firstresult=True)
    def generate(self, handle: Any, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:  # type: ignore[empty-body]
        """Yield :class:`~flavorkit.types.Delta` text increments for a batch of validated requests.

        Each request produces one sequence; ``Delta.index`` is the request's position in
        ``requests``. Honour ``max_tokens`` (a hard limit), ``temperature``, ``top_p``, ``top_k``
        and ``seed`` (``None`` means unseeded: two requests for the same prompt must be able to
        differ); end every request with a delta whose ``finish_reason`` is ``"stop"`` (end of
        sequence) or ``"length"``. Never emit special tokens as text. Stop strings are cut by the
        core: a backend only needs to watch ``request.cancelled`` and drop cancelled requests.

        **Seeds of ``n`` choices.** The core expands a request with ``n`` choices into ``n``
        requests. With ``seed=s``, choice ``i`` gets the seed ``(s + i) % 2**31`` (choice 0 gets
        ``s`` itself, so it samples what the same request with ``n=1`` samples); without a seed
        every choice is unseeded. Each request carries its own seed, and the requests of one
        batch may carry different ones: derive the random state of each request from its own
        ``seed`` (a generator per request, or reseeding before each request of a runtime with
        one global generator), never one seed for the whole batch.

        **Incomplete UTF-8 at the end.** Text held back because it ends inside a multi-byte
        character is flushed in the request's last delta, decoded the way the tokenizer decodes
        the whole completion (invalid bytes become U+FFFD, the replacement character). So the
        concatenated text of a request always equals decoding all its generated tokens, special
        tokens skipped.

        **Threads.** The core never makes two calls into one handle at the same time, whatever
        threads its callers use (MLflow's scoring server runs each request in its own thread):
        ``encode``, this hook, each advance of the iterator it returns, the iterator's
        ``close()``, the calls of a :meth:`generate_session` session and ``unload`` wait for each
        other, per loaded model. Consecutive calls may come from different threads (a stream
        may be advanced by one thread and closed by another), so keep no per-thread state. One
        generation runs at a time: the core does not call ``generate`` again, or open a session,
        until the previous stream is exhausted or closed. The one exception is the backend that
        declares ``continuous_batching`` without a session hook: the core then interleaves
        several of its streams, from one thread (see :class:`~flavorkit.types.Capability`).

        **Abandoned streams.** The core may stop reading the iterator at any point (every
        request finished, a client went away, an error) and then calls its ``close()`` when it
        has one, before the next ``generate``. Write this hook as a generator (or return one)
        and release what the call holds (runtime generators, KV caches, device buffers) in a
        ``finally`` block, so that a stream closed after its first delta leaves the handle ready
        for the next call; a request need not receive its final delta after ``close()``.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def generate_session(self, handle: Any) -> GenerationSession | None:
        """Open a :class:`~flavorkit.types.GenerationSession`: a batch that requests join while it runs.

        Optional; used by ``flavorkit serve`` so that a request arriving while others decode starts
        within a step or two instead of waiting for them to finish. Return None (the default) to be
        served with request-level batching through :meth:`generate`, or interleaved streams when
        the backend declares ``continuous_batching`` (the core then interleaves ``generate`` streams).
        A backend that implements this hook should declare ``continuous_batching`` too: the
        conformance kit checks the sessions of the backends that declare it. ``predict`` keeps using :meth:`generate`.

        The threading rule of :meth:`generate` applies: the session's ``add``, ``step`` and
        ``close`` never overlap another call into the handle, and while a session is open (from
        this hook until its ``close()``, which the core always calls) the core runs no other
        generation on the handle. :meth:`encode` may run between two steps.

        .. versionadded:: 2
        """

    @hookspec(firstresult=True)
    def guidance_tokenizer(self, handle: Any) -> Any:
        """Return the model's vocabulary as an ``llguidance.LLTokenizer``, for guided decoding.

        Required with the ``guided_decoding`` capability: the core compiles each request's grammar
        against it and masks logits by its token ids, so it must number tokens as the model does
        and name the end-of-sequence token the backend stops on. Build it once per handle (about a
        second for a 50k vocabulary): :func:`flavorkit.sdk.guidance_tokenizer_from_hf` for a
        ``transformers`` tokenizer, :func:`flavorkit.sdk.guidance_tokenizer_from_file` for a
        ``tokenizer.json``. Called at most once per loaded model, lazily (on the first guided
        request).

        .. versionadded:: 3
        """

    @hookspec(firstresult=True)
    def unload(self, handle: Any) -> None:
        """Release the resources of a handle (sessions, GPU memory). Optional.

        Called at most once per handle (by ``LoadedModel.close``, by the conformance kit, after a
        failed load; MLflow itself never unloads a model), never at the same time as another
        call into the handle. Release native
        runtimes here rather than leaving them to interpreter exit: a destructor that crashes
        at exit fails every script that loaded the model.

        .. versionadded:: 1
        """

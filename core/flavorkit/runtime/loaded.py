"""The serving core: turns validated requests into backend calls and OpenAI-shaped answers.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

Everything a user can observe about a response is decided in the core, not in the backend:
defaults, ``n``, stop strings, ``max_tokens`` enforcement, ``finish_reason`` and usage (per choice,
in :mod:`flavorkit.runtime.choices`) and the response and chunk shapes (built by
:mod:`flavorkit.responses`, as the HTTP server builds them). ``predict`` is literally the joined
stream of ``predict_stream``'s events, so the two cannot disagree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

from flavorkit.backend.registry import Backend
from flavorkit.errors import BackendError, InvalidRequest
from flavorkit.responses import Dialect, chat_chunk, chat_completion, new_id, now, tool_call_deltas
from flavorkit.runtime.choices import BatchEvent, Choice, PreparedRequest, Row
from flavorkit.runtime.continuous import ContinuousBatch
from flavorkit.runtime.guidance import Grammar, Guidance, SamplingAdjustments, build_grammar, check_schema
from flavorkit.runtime.interleave import InterleavedSession
from flavorkit.runtime.stopping import StopMatcher
from flavorkit.runtime.tool_prompts import PROBE_TOOLS, generic_messages, native_messages, tool_dicts
from flavorkit.schema import (
    MAX_SEED,
    ChatRequest,
    NamedToolChoice,
    TextRequest,
    UnsupportedFields,
    generation_settings,
    parse_request,
    stop_tuple,
    validate_call_params,
)
from flavorkit.signatures import CHAT, TASKS
from flavorkit.types import Capability, Delta, GenerationRequest, RuntimeInfo, close_stream

# BatchEvent and PreparedRequest live in flavorkit.runtime.choices; serve/ imports them from here too.
__all__ = ["CORE_DEFAULTS", "BatchEvent", "LoadedModel", "PreparedRequest"]

_T = TypeVar("_T")

#: Generation settings used when neither the request nor the packaged defaults set them.
CORE_DEFAULTS: dict[str, Any] = {"max_tokens": 256, "temperature": 1.0, "top_p": 1.0, "n": 1}


def _is_template_error(exc: BaseException) -> bool:
    """True for a Jinja template error (what ``raise_exception`` in a chat template raises)."""
    return any(cls.__module__.split(".")[0] == "jinja2" for cls in type(exc).__mro__)


class LoadedModel:
    """A backend handle plus the contract: what the packaged pyfunc model delegates to.

    Safe to share between threads: calls into the handle never overlap, and one generation (a
    ``generate`` stream, or a session from :meth:`open_session` until its ``close()``) runs at a
    time, as the hook spec promises backends. A ``predict_stream`` iterator holds the model until
    it is exhausted or closed.
    """

    def __init__(
        self,
        backend: Backend,
        handle: Any,
        *,
        task: str = CHAT,
        defaults: Mapping[str, Any] | None = None,
        model_name: str | None = None,
        prompt_format: Literal["raw", "chat_template"] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if task not in TASKS:
            raise InvalidRequest("task", f"unknown task {task!r}", allowed=", ".join(TASKS))
        if prompt_format is None:  # a chat model always templates; text-generation continues the prompt as is
            prompt_format = "chat_template" if task == CHAT else "raw"
        if task == CHAT and prompt_format != "chat_template":
            raise InvalidRequest("prompt_format", "a chat model renders its messages with the chat template")
        self.backend = backend
        self.handle = handle
        self.task = task
        self.info: RuntimeInfo = backend.describe(handle)
        # What the backend declares for this model's options (spec 5); None: its defaults.
        self.capabilities = backend.capabilities(options)
        self.defaults = {**CORE_DEFAULTS, **(defaults or {})}
        if Capability.SAMPLING not in self.capabilities and "temperature" not in (defaults or {}):
            self.defaults["temperature"] = 0.0
        self.model_name = model_name or self.info.model_name
        # The concurrency rule of the hook spec (see ``WrapperBackend.generate``): ``_calls`` makes every
        # call into the handle (encode, starting or advancing or closing a stream, a session's add,
        # step and close, unload) wait for the one in progress, from whichever thread; ``_generation``
        # is held from the start of a generation (a ``generate`` stream, an open session) until it is
        # exhausted or closed, so generations of one handle never interleave. ``_calls`` is only ever
        # taken inside ``_generation``, never the other way round.
        self._calls = threading.RLock()
        self._generation = threading.Lock()
        self.guided = Capability.GUIDED_DECODING in self.capabilities
        self.guidance = Guidance(lambda: self.call(lambda: self.backend.guidance_tokenizer(self.handle)))
        self._renders_tools: bool | None = None
        #: True when a text-generation prompt is tokenized as plain text (``encode_text``), not templated.
        self.raw_prompts = prompt_format == "raw"
        if self.raw_prompts:  # refuse at load, naming the hook, rather than on the first request
            backend.encode_text(handle, "")

    # -- public API -----------------------------------------------------------------------------

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Answer every input row, in order: chat completion dicts, or strings for text-generation.

        ``params`` (MLflow's ``params``) are generation settings for this call: each row's own
        fields win over them, and they win over the packaged defaults.
        """
        rows = self._prepare(self._rows(model_input), call=validate_call_params(params, chat=self.task == CHAT))
        for _choice, _text, _finish in self._events(rows):
            pass  # _events accumulates text into each choice
        return [self._response(row) for row in rows]

    def predict_stream(self, model_input: Any, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Stream one request: ``chat.completion.chunk`` dicts, or text pieces for text-generation."""
        raw = self._rows(model_input)
        if len(raw) != 1:
            raise InvalidRequest("inputs", f"predict_stream takes exactly one request, got {len(raw)}")
        rows = self._prepare(raw, call=validate_call_params(params, chat=self.task == CHAT))
        return self._stream(rows[0], rows)

    def prepare_request(self, raw: Any, *, text_logprobs: int | None = None) -> PreparedRequest:
        """Validate and encode one request for :meth:`run_batch`; raise ``InvalidRequest`` naming the field.

        ``text_logprobs`` records the log-probabilities of a text-generation request's tokens with
        that many alternatives each: ``/v1/completions``' ``logprobs``, which pyfunc's string
        answers have no place for. A backend without guided decoding refuses it.
        """
        if text_logprobs is not None:
            if self.task == CHAT:
                raise InvalidRequest("logprobs", "a chat request asks for logprobs in its own fields")
            if not self.guided:
                raise UnsupportedFields(["logprobs"], self.backend.name)
        return PreparedRequest(self._prepare([raw], text_logprobs)[0])

    def run_batch(self, requests: Sequence[PreparedRequest]) -> Iterator[BatchEvent]:
        """Run independent requests through one backend ``generate`` call; yield per-choice events.

        Each request keeps its own settings (``n``, stop strings, ``max_tokens``, sampling): the core
        expands every choice into its own :class:`GenerationRequest`, so one call serves them all. A
        request cancelled before or during the batch gets ``finish_reason="cancelled"`` on its
        unfinished choices and yields no more events; the others are not disturbed.
        """
        live: list[Choice] = []
        owner: dict[int, int] = {}  # id(choice) -> position of its request in ``requests``
        for i, prepared in enumerate(requests):
            if prepared.cancelled:
                prepared.mark_cancelled()
                continue
            for choice in prepared.choices:
                if choice.finish is None:
                    live.append(choice)
                    owner[id(choice)] = i
        if not live:
            return
        seen_cancelled: set[int] = set()

        def cancelled() -> int:
            """Mark requests cancelled from other threads; return how many unfinished choices that ended."""
            ended = 0
            for i, prepared in enumerate(requests):
                if prepared.cancelled and i not in seen_cancelled:
                    seen_cancelled.add(i)
                    ended += sum(1 for c in prepared.choices if c.finish is None)
                    prepared.mark_cancelled()
            return ended

        for choice, out, finish, tokens in self._drive(live, cancelled):
            yield choice.event(owner[id(choice)], out, tokens, finish)
        for prepared in requests:
            if prepared.cancelled:
                prepared.mark_cancelled()
        self._check_finished(live)

    def open_session(self) -> ContinuousBatch | None:
        """A :class:`~flavorkit.runtime.continuous.ContinuousBatch` that requests can join while it decodes.

        It uses the backend's own ``generate_session`` (spec version 2) when it has one, else
        interleaved ``generate`` streams when it declares ``continuous_batching``; None when neither,
        and the caller falls back to :meth:`run_batch`. The session holds the model until its
        ``close()``: other generations wait (encoding does not), so close it from a ``finally``.
        """
        self._generation.acquire()
        try:
            with self._calls:
                session = self.backend.generate_session(self.handle)
            if session is None and Capability.CONTINUOUS_BATCHING in self.capabilities:
                session = InterleavedSession(lambda requests: self.backend.generate(self.handle, requests))
        except BaseException:
            self._generation.release()
            raise
        if session is None:
            self._generation.release()
            return None
        return ContinuousBatch(self, session, release=self._generation.release)

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, one call into the handle or a session of it, while no other call into the handle runs.

        This is the hook spec's rule that calls into a handle never overlap; a
        :class:`~flavorkit.runtime.continuous.ContinuousBatch` makes its session's calls through it.
        """
        with self._calls:
            return fn()

    def close(self) -> None:
        """Release the backend handle."""
        with self._calls:
            self.backend.unload(self.handle)

    # -- input handling -------------------------------------------------------------------------

    def _rows(self, model_input: Any) -> list[Any]:
        """Normalise dict / list / DataFrame / str inputs into a list of row objects."""
        try:
            import pandas as pd

            if isinstance(model_input, pd.DataFrame):
                return list(model_input.to_dict(orient="records"))
        except ImportError:  # pragma: no cover - pandas comes with mlflow
            pass
        if isinstance(model_input, Mapping):
            return [model_input]
        if isinstance(model_input, str):
            return [model_input]
        if isinstance(model_input, Sequence) or hasattr(model_input, "tolist"):
            rows = list(model_input.tolist() if hasattr(model_input, "tolist") else model_input)
            if not rows:
                raise InvalidRequest("inputs", "no requests given", allowed="a request object or a non-empty list")
            return rows
        raise InvalidRequest(
            "inputs",
            f"unsupported input type {type(model_input).__name__}",
            allowed="a dict, a list of dicts or a pandas DataFrame",
        )

    def _settings(
        self, own: Mapping[str, Any], call: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Effective settings (defaults, the call's ``params``, the request's ``own``) and the explicit ones."""
        explicit = {**(call or {}), **own}
        return {**self.defaults, **explicit}, explicit

    def _prepare(
        self, raw_rows: Sequence[Any], text_logprobs: int | None = None, call: Mapping[str, Any] | None = None
    ) -> list[Row]:
        """Validate and encode every row before any generation starts, so bad input costs nothing."""
        rows: list[Row] = []
        errors: list[InvalidRequest] = []
        many = len(raw_rows) > 1
        for i, raw in enumerate(raw_rows):
            try:
                rows.append(self._prepare_row(i, raw, text_logprobs, call))
            except InvalidRequest as exc:
                if not many:
                    raise
                errors.append(InvalidRequest(f"inputs[{i}].{exc.field}", exc.detail, exc.allowed))
        if errors:  # every bad row is named, not only the first
            raise InvalidRequest.for_rows(errors)
        return rows

    def renders_tools(self) -> bool:
        """Whether the model's chat template renders ``tools`` (probed once: the prompt changes with them)."""
        if self._renders_tools is None:
            probe = [{"role": "user", "content": "Hello"}]
            with self._calls:
                try:
                    with_tools = self.backend.encode(self.handle, probe, PROBE_TOOLS)
                except Exception:  # a template that chokes on tools does not render them
                    with_tools = None
                self._renders_tools = with_tools is not None and with_tools != self.backend.encode(self.handle, probe)
        return self._renders_tools

    def _messages(self, req: ChatRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The messages ``encode`` gets, and the tools its template renders (None: none, or the generic form)."""
        with_tools = bool(req.tools) or any(m.role == "tool" or m.tool_calls for m in req.messages)
        if not with_tools:
            # Exactly role and content reach the backend: ``name`` is accepted for OpenAI
            # compatibility only, so that no chat template renders (or chokes on) a field that
            # backends treat differently.
            return [{"role": m.role, "content": m.content or ""} for m in req.messages], None
        if self.renders_tools():
            return native_messages(req.messages), tool_dicts(req.tools or []) or None
        return generic_messages(req.messages, req.tools or []), None

    def _grammar(self, req: ChatRequest | TextRequest) -> Grammar | None:
        """The request's grammar (None: free decoding), its schemas checked with the path of a problem."""
        if not isinstance(req, ChatRequest):
            return None
        fmt = req.response_format.model_dump(by_alias=True, exclude_none=True) if req.response_format else None
        tools = tool_dicts(req.tools or [])
        choice = req.tool_choice.model_dump() if isinstance(req.tool_choice, NamedToolChoice) else req.tool_choice
        grammar = build_grammar(fmt, tools, choice, req.parallel_tool_calls is not False)
        if grammar is None:
            return None
        if grammar.schema is not None and fmt is not None and fmt["type"] == "json_schema":
            check_schema(grammar.schema, "response_format.json_schema.schema")
        if grammar.kind != "json":
            for k, tool in enumerate(tools):
                if tool["function"].get("parameters"):
                    check_schema(tool["function"]["parameters"], f"tools[{k}].function.parameters")
        return grammar

    @staticmethod
    def _adjustments(req: ChatRequest | TextRequest) -> SamplingAdjustments | None:
        """The request's ``logit_bias`` and penalties, or None when they change nothing."""
        adjust = SamplingAdjustments(
            bias={int(k): float(v) for k, v in (req.logit_bias or {}).items()},
            presence=float(req.presence_penalty or 0.0),
            frequency=float(req.frequency_penalty or 0.0),
        )
        return adjust if adjust.active else None

    def _prepare_row(
        self, i: int, raw: Any, text_logprobs: int | None = None, call: Mapping[str, Any] | None = None
    ) -> Row:
        req = parse_request(raw, self.task, self.backend.name, guided=self.guided)
        own = generation_settings(req)
        settings, explicit = self._settings(own, call)

        def field(key: str) -> str:
            """Where a setting came from, for errors: the request's own field, or the call's ``params``."""
            return key if key in own or key not in (call or {}) else f"params.{key}"

        tools: list[dict[str, Any]] | None = None
        if isinstance(req, ChatRequest):
            messages, tools = self._messages(req)
            prompt_field = "messages"
        else:  # text-generation: the prompt as plain text, or (packaged before spec 4) as one user message
            messages = [] if self.raw_prompts else [{"role": "user", "content": req.prompt}]
            prompt_field = "prompt"
        grammar = self._grammar(req) if self.guided else None
        adjustments = self._adjustments(req) if self.guided else None
        logprobs = text_logprobs
        if isinstance(req, ChatRequest) and req.logprobs and self.guided:
            logprobs = req.top_logprobs or 0
        if settings["temperature"] > 0 and Capability.SAMPLING not in self.capabilities:
            raise InvalidRequest(
                field("temperature"),
                f"backend {self.backend.name!r} supports greedy decoding only",
                allowed="0",
            )
        try:
            with self._calls:
                if isinstance(req, TextRequest) and self.raw_prompts:
                    prompt_ids = self.backend.encode_text(self.handle, req.prompt)
                else:
                    prompt_ids = self.backend.encode(self.handle, messages, tools)
        except Exception as exc:
            if not _is_template_error(exc):
                raise
            # A chat template may refuse a conversation (roles that do not alternate, a system turn
            # it does not support): that is the request's fault, so it is named, not a server error.
            raise InvalidRequest(prompt_field, f"the model's chat template refuses these messages: {exc}") from None
        ctx = self.info.context_length
        n_prompt = len(prompt_ids)
        if n_prompt == 0:  # an empty raw prompt, with a tokenizer that adds no beginning-of-sequence token
            raise InvalidRequest(prompt_field, "the prompt is empty: it gives no token to continue", allowed="text")
        if n_prompt >= ctx:
            raise InvalidRequest(
                prompt_field,
                f"the prompt is {n_prompt} tokens but the model's context is {ctx} tokens",
                allowed=f"a prompt of at most {ctx - 1} tokens",
            )
        max_tokens = int(settings["max_tokens"])
        if n_prompt + max_tokens > ctx:
            if "max_tokens" in explicit:
                raise InvalidRequest(
                    field("max_tokens"),
                    f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the context of {ctx} tokens",
                    allowed=f"at most {ctx - n_prompt} for this prompt",
                )
            max_tokens = ctx - n_prompt
        n = int(settings.get("n", 1)) if isinstance(req, ChatRequest) else 1
        seed = settings.get("seed")
        temperature = float(settings["temperature"])
        stop = stop_tuple(settings.get("stop"))  # the request's own stop replaces the default
        choices = []
        for j in range(n):
            gen = GenerationRequest(
                prompt_ids=prompt_ids,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=float(settings["top_p"]),
                top_k=settings.get("top_k"),
                seed=None if seed is None else (int(seed) + j) % (MAX_SEED + 1),
                stop=stop,
            )
            if grammar is not None or adjustments is not None or logprobs is not None:
                gen.logits_processor = self.guidance.guide(grammar, adjustments, logprobs)
            choice = Choice(row=i, index=j, request=gen, matcher=StopMatcher(stop), wants_logprobs=logprobs is not None)
            if grammar is not None and grammar.kind != "json":
                choice.tools = grammar.tool_names
                choice.calls_only = grammar.kind == "tools"
            choices.append(choice)
        return Row(request=req, choices=choices, prompt_tokens=n_prompt)

    # -- generation -----------------------------------------------------------------------------

    def _events(self, rows: Sequence[Row]) -> Iterator[tuple[Choice, str, str | None]]:
        """Run one backend batch over all choices; yield ``(choice, text, finish_reason)`` events."""
        choices = [c for row in rows for c in row.choices]
        for choice, out, finish, _tokens in self._drive(choices, lambda: 0):
            if out or finish is not None or choice.unsent_calls:
                yield choice, out, finish
        self._check_finished(choices)

    def _drive(
        self, choices: Sequence[Choice], cancelled: Callable[[], int]
    ) -> Iterator[tuple[Choice, str, str | None, int]]:
        """One backend ``generate`` over ``choices``; yield ``(choice, text, finish, tokens)`` per applied delta.

        ``cancelled()`` is polled before each delta and returns how many unfinished choices it has
        just marked cancelled; the stream is closed as soon as every choice has finished.
        """
        pending = len(choices)
        with self._generation:  # released when the stream is exhausted, closed or garbage collected
            with self._calls:
                stream = self.backend.generate(self.handle, [c.request for c in choices])
            try:
                while True:
                    with self._calls:
                        delta: Delta | None = next(stream, None)
                    if delta is None:
                        break
                    pending -= cancelled()
                    if pending == 0:
                        break
                    choice = choices[delta.index]
                    if choice.finish is not None:
                        continue  # cancelled or capped; the backend may still be winding down
                    before = choice.tokens
                    out, finish = choice.advance(delta.text, delta.tokens, delta.finish_reason, self.backend.name)
                    if finish is not None:
                        pending -= 1
                    if out or finish is not None or choice.tokens > before:
                        yield choice, out, finish, choice.tokens - before
                    if pending == 0:
                        break
            finally:
                with self._calls:
                    close_stream(stream)  # a generator's cleanup frees its batch

    def _check_finished(self, choices: Sequence[Choice]) -> None:
        """Raise :class:`BackendError` when the backend's stream ended before every choice finished."""
        unfinished = sum(1 for c in choices if c.finish is None)
        if unfinished:
            raise BackendError(
                f"backend {self.backend.name!r} stopped without finishing {unfinished} request(s); "
                "every request must end with a Delta carrying finish_reason"
            )

    # -- response shaping -----------------------------------------------------------------------

    def _response(self, row: Row) -> Any:
        """One row's answer: a ``chat.completion`` dict in the pyfunc dialect, or the text for text-generation."""
        if self.task != CHAT:
            return "".join(row.choices[0].parts)
        choices = [("".join(c.parts), c.finish) for c in row.choices]
        calls = [c.calls for c in row.choices]
        logprobs = [c.all_logprobs() for c in row.choices]
        return chat_completion(
            new_id("chatcmpl"),
            now(),
            self.model_name,
            choices,
            row.usage(),
            dialect=Dialect.PYFUNC,
            tool_calls=calls,
            logprobs=logprobs,
        )

    def _stream(self, row: Row, rows: list[Row]) -> Iterator[Any]:
        """One row's stream: ``chat.completion.chunk`` dicts (usage on the last), or text pieces for text-generation."""
        events = self._events(rows)
        if self.task != CHAT:
            for _choice, text, _finish in events:
                if text:
                    yield text
            return
        cid, created = new_id("chatcmpl"), now()
        started: set[int] = set()
        remaining = len(row.choices)
        sent_calls: dict[int, int] = {}
        for choice, text, finish in events:
            calls = choice.take_calls()
            deltas = tool_call_deltas(calls, sent_calls.get(choice.index, 0)) if calls else None
            sent_calls[choice.index] = sent_calls.get(choice.index, 0) + len(calls)
            role: Literal["assistant"] | None = None
            if choice.index not in started:
                started.add(choice.index)
                role = "assistant"
            usage = None
            if finish is not None:
                remaining -= 1
                if remaining == 0:
                    usage = row.usage()
            yield chat_chunk(
                cid,
                created,
                self.model_name,
                choice.index,
                role=role,
                content=text if text or role else None,
                tool_calls=deltas,
                logprobs=choice.take_logprobs(),
                finish_reason=finish,
                usage=usage,
                dialect=Dialect.PYFUNC,
            )

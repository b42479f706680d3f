"""Guided decoding: grammars (JSON schemas, tool calls) applied through each request's logits processor.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.

The core turns ``response_format`` and ``tools`` into a grammar and gives each guided request a
:class:`~flavorkit.types.LogitsProcessor`; a backend that declares ``guided_decoding`` calls it at
every step and numbers tokens as its ``guidance_tokenizer`` does. These clauses check that half.
The kit's tiny models have random weights, so every valid answer is the grammar's doing. The
schemas are bounded (short strings, small numbers, few items), so a guided answer closes well
within ``max_tokens``; an answer cut by ``max_tokens`` (``finish_reason`` "length") proves nothing
and is passed over, but every clause needs some answers that ended by themselves.

``guided_refused`` is the other side: a backend without the capability gets no processor, and the
core refuses what only a grammar could honour.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from flavorkit.testing.clauses import clause
from flavorkit.testing.harness import PROBE_TOKENS, PROMPTS, ClauseFailed, Generated, Harness, check, content
from flavorkit.testing.mixins.base import ConformanceBase
from flavorkit.types import Capability, GenerationRequest, Message

__all__ = ["SCHEMAS", "TOOLS", "GuidedClauses"]

#: The prompt of the guided requests (the grammar, not the prompt, decides what is valid).
_JSON_PROMPT: tuple[Message, ...] = ({"role": "user", "content": "Describe one thing as JSON."},)
_TOOL_PROMPT: tuple[Message, ...] = ({"role": "user", "content": "Set the unit to Celsius."},)
#: ``max_tokens`` of a JSON answer: every schema of :data:`SCHEMAS` closes in fewer tokens.
_JSON_TOKENS = 128
#: ``max_tokens`` of a tool call, and the room ``guided_tool_choice`` needs after the prompt.
_TOOL_TOKENS = 96


def _object(properties: Mapping[str, Any], required: Sequence[str]) -> dict[str, Any]:
    """A closed object schema (no other keys), so an answer that follows another schema fails this one."""
    return {"type": "object", "properties": dict(properties), "required": list(required), "additionalProperties": False}


#: The schemas ``guided_json_schema`` asks for, one per kind of constraint; their required keys
#: differ, so an answer that follows one schema breaks every other.
SCHEMAS: dict[str, dict[str, Any]] = {
    "nested object": _object(
        {
            "person": _object(
                {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer", "minimum": 0, "maximum": 99}},
                ["name", "age"],
            )
        },
        ["person"],
    ),
    "array": _object({"ids": {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 1, "maxItems": 3}}, ["ids"]),
    "enum": _object(
        {"color": {"enum": ["red", "green", "blue"]}, "size": {"type": "string", "enum": ["S", "L"]}}, ["color", "size"]
    ),
    "anyOf": _object(
        {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}, {"type": "null"}]}},
        ["value"],
    ),
    "optional fields": _object(
        {
            "done": {"type": "boolean"},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
            "tag": {"type": "string", "maxLength": 3},
        },
        ["done"],
    ),
}

#: The tools of ``guided_tool_choice``: short, with bounded arguments, so that a call closes within
#: :data:`_TOOL_TOKENS` and the generic tool prompt fits a small context.
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": "unit", "parameters": _object({"u": {"enum": ["c", "f"]}}, ["u"])},
    },
    {
        "type": "function",
        "function": {
            "name": "flag",
            "parameters": _object(
                {"on": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}}, ["on"]
            ),
        },
    },
]
_PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

#: What a guided backend does, for the failure messages.
_HOW = (
    "a backend declaring 'guided_decoding' calls request.logits_processor.process(logits) on each step's logits, "
    "picks the token from what it leaves, then calls .accept(token) (flavorkit.sdk.process_logits and accept_tokens "
    "do it for a batch)"
)


def _shown(value: Any, width: int = 200) -> str:
    """``repr(value)``, cut to ``width`` characters with "..." when longer."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _json_format(name: str) -> dict[str, Any]:
    """``response_format`` asking for :data:`SCHEMAS` ``[name]``."""
    return {"type": "json_schema", "json_schema": {"name": name.replace(" ", "_"), "schema": SCHEMAS[name]}}


def _violation(schema: Mapping[str, Any], value: Any) -> str:
    """How ``value`` breaks ``schema`` (the first error, with its path), or "" when it follows it."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(dict(schema)).iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return ""
    where = "/".join(str(p) for p in errors[0].absolute_path)
    return f"{errors[0].message} (at /{where})"


def _check_json(what: str, text: Any, finish: Any, schema: Mapping[str, Any]) -> bool:
    """Whether the answer ended by itself; raise :class:`ClauseFailed` when it did and does not follow ``schema``."""
    if finish == "length":
        return False
    check(finish == "stop", f"{what} ended with finish_reason {finish!r}; expected 'stop', or 'length' when cut")
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ClauseFailed(
            f"{what} ended with finish_reason 'stop' but is not JSON ({exc}): {_shown(text)}; the grammar allows "
            f"only JSON that follows the schema, so its mask was not applied: {_HOW}"
        ) from None
    problem = _violation(schema, value)
    check(
        not problem,
        f"{what} is JSON but does not follow the schema: {problem}: {_shown(text)}; the grammar allows only what "
        f"follows it, so its mask was not applied to this request: {_HOW}",
    )
    return True


def _check_calls(what: str, finish: Any, text: Any, calls: Any, allowed: Sequence[str], *, one: bool = False) -> bool:
    """Whether the answer ended with its calls; raise :class:`ClauseFailed` on a malformed or missing call."""
    calls = list(calls or [])
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        check(
            isinstance(call, Mapping)
            and call.get("type") == "function"
            and bool(call.get("id"))
            and isinstance(function, Mapping),
            f"{what}: tool call {k} is {_shown(call)}; expected {{'id', 'type': 'function', 'function': {{...}}}}",
        )
        assert isinstance(function, Mapping)
        name = function.get("name")
        check(
            name in allowed,
            f"{what}: tool call {k} calls {name!r}, but only {', '.join(map(repr, allowed))} may be called; {_HOW}",
        )
        raw = function.get("arguments")
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            arguments = None
        check(
            isinstance(arguments, dict),
            f"{what}: the arguments of tool call {k} ({name!r}) are {_shown(raw)}, not a JSON object; {_HOW}",
        )
        problem = _violation(_PARAMETERS[str(name)], arguments)
        check(
            not problem,
            f"{what}: the arguments of tool call {k} ({name!r}) do not follow the tool's parameters: {problem}: "
            f"{_shown(raw)}; {_HOW}",
        )
    if finish == "length":
        return False
    check(
        finish == "tool_calls" and calls,
        f"{what} ended with finish_reason {finish!r}, content {_shown(text)} and {len(calls)} tool call(s); calls "
        f"are required, so the grammar lets the answer end only after a whole call: {_HOW}",
    )
    check(not text, f"{what}: calls are required, yet the answer has text besides them: {_shown(text)}; {_HOW}")
    check(not one or len(calls) == 1, f"{what}: parallel_tool_calls is false, yet {len(calls)} calls were made")
    return True


def _stream(conformance: Harness, request: Mapping[str, Any]) -> tuple[str, Any, list[dict[str, Any]]]:
    """``predict_stream`` of one request, joined: ``(content, finish_reason, tool_calls)``.

    Streamed tool calls are merged by their ``index`` as an OpenAI client does: the first piece of
    a call carries its id and name, the next pieces more of its arguments.
    """
    parts: list[str] = []
    finish: Any = None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in conformance.pyfunc().predict_stream(dict(request)):
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            parts.append(delta.get("content") or "")
            for piece in delta.get("tool_calls") or []:
                call = calls.setdefault(
                    int(piece.get("index", 0)),
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = piece.get("id") or call["id"]
                call["type"] = piece.get("type") or call["type"]
                function = piece.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                finish = choice["finish_reason"]
    return "".join(parts), finish, [calls[k] for k in sorted(calls)]


def _choice(response: Mapping[str, Any], index: int = 0) -> tuple[Any, Any, Any]:
    """``(content, finish_reason, tool_calls)`` of choice ``index`` of a chat completion."""
    choice = response["choices"][index]
    message = choice.get("message") or {}
    return message.get("content"), choice.get("finish_reason"), message.get("tool_calls")


def _budget(conformance: Harness, messages: Sequence[Message], wanted: int) -> int:
    """``wanted`` tokens, or what the context leaves after the prompt of ``messages`` when that is less."""
    return max(1, min(wanted, conformance.info().context_length - len(conformance.encode(messages)) - 1))


def _tool_room(conformance: Harness, request: Mapping[str, Any]) -> tuple[int, str]:
    """``(max_tokens, "")`` for a request with tools, or ``(0, why not)`` when the context leaves too little room.

    The prompt is the core's (the model's template with the tools, or the generic form), so it is
    measured by preparing the request, not by ``encode`` alone.
    """
    from flavorkit.errors import InvalidRequest

    ctx = conformance.info().context_length
    try:
        prompt = conformance.model().prepare_request({**request, "max_tokens": 1}).prompt_tokens
    except InvalidRequest as exc:
        if exc.field != "messages":
            raise
        prompt = None
    room = ctx - prompt - 1 if prompt is not None else 0
    if room >= _TOOL_TOKENS:
        return _TOOL_TOKENS, ""
    fits = f"is {prompt} tokens, which leaves {max(room, 0)} of" if prompt is not None else "does not fit"
    return 0, (
        f"the prompt of a request with the kit's two short tools {fits} the model's {ctx}-token context, and a "
        f"call may take {_TOOL_TOKENS} tokens; use a model source with a longer context "
        "(flavorkit.testing.models.tiny_checkpoint(context_length=1024), say)"
    )


class _Script:
    """A logits processor that leaves one token at each step: the next of a script, then end of sequence.

    It records every call, so the clause can tell which part of the protocol a backend skipped.
    """

    def __init__(self, script: Sequence[int], eos: int) -> None:
        self.script = [*script, eos]
        self.events: list[str] = []
        self.accepted: list[int] = []
        self.shapes: list[str] = []

    def process(self, logits: Any) -> None:
        """Leave only the script's next token (the end-of-sequence token once it is done)."""
        import numpy as np

        self.events.append("process")
        if isinstance(logits, np.ndarray) and logits.ndim == 1 and logits.dtype.kind == "f":
            self.shapes.append(str(logits.shape[0]))
        else:
            self.shapes.append(f"a {type(logits).__name__} of shape {getattr(logits, 'shape', '?')}")
        logits[:] = -np.inf
        logits[self.script[min(len(self.accepted), len(self.script) - 1)]] = 0.0

    def accept(self, token: int) -> None:
        """Record the token the backend picked."""
        self.events.append("accept")
        self.accepted.append(int(token))


class GuidedClauses(ConformanceBase):
    """Guided decoding: the logits processor protocol, JSON schemas, tool calls; refused without the capability."""

    @clause("guided_tokenizer")
    def test_guided_tokenizer(self, conformance: Harness) -> None:
        """guidance_tokenizer() is an llguidance.LLTokenizer that decodes encode()'s ids back to the conversation."""
        import llguidance

        tokenizer = conformance.guidance_tokenizer()
        check(
            isinstance(tokenizer, llguidance.LLTokenizer),
            f"guidance_tokenizer() returned {type(tokenizer).__name__}, not an llguidance.LLTokenizer; build it with "
            "flavorkit.sdk.guidance_tokenizer_from_hf or guidance_tokenizer_from_file",
        )
        vocab, eos = int(tokenizer.vocab_size), int(tokenizer.eos_token)
        check(0 <= eos < vocab, f"the guidance tokenizer's end-of-sequence token {eos} is outside its {vocab} tokens")
        conversation = PROMPTS[2]
        ids = conformance.encode(conversation)
        check(
            max(ids) < vocab,
            f"encode() gives token id {max(ids)}, but the guidance tokenizer knows {vocab} tokens; it must cover "
            "the model's whole vocabulary (pass n_vocab, the width of the logits)",
        )
        text = tokenizer.decode_str(ids)
        missing = [m["role"] for m in conversation if m["content"] not in text]
        check(
            not missing,
            f"the guidance tokenizer decodes encode()'s ids to {_shown(text, 300)}, which lacks the "
            f"{', '.join(missing)} message(s): it numbers tokens differently from the model; build it from the "
            "model's own tokenizer",
        )

    @clause("guided_logits_processor")
    def test_guided_logits_processor(self, conformance: Harness) -> None:
        """A processor leaving one token per step gets its script, alone, sampled and row by row in a batch."""
        tokenizer = conformance.guidance_tokenizer()
        eos, vocab = int(tokenizer.eos_token), int(tokenizer.vocab_size)
        probe = conformance.probe()
        sampled = {"temperature": 1.0, "seed": 7} if Capability.SAMPLING in conformance.capabilities() else {}

        def scripted(word: str, **settings: Any) -> tuple[GenerationRequest, _Script, str]:
            script = [int(t) for t in tokenizer.tokenize_str(word)]
            request = conformance.request(probe.messages, len(script) + 4, **settings)
            request.logits_processor = processor = _Script(script, eos)
            return request, processor, word

        def verify(what: str, got: Generated, processor: _Script, word: str) -> None:
            steps = len(processor.script)
            events = processor.events
            check(
                events,
                f"{what}: the request's logits processor was never called while {got.tokens} token(s) were "
                f"generated ({got.describe()}); {_HOW}",
            )
            pairs = ["process", "accept"] * (len(events) // 2)
            check(
                events == pairs and len(events) // 2 == got.tokens,
                f"{what}: the processor's calls were {events[:12]}{' ...' if len(events) > 12 else ''} for "
                f"{got.tokens} generated token(s); call process once before each token is picked and accept once "
                "after, the end-of-sequence token included",
            )
            bad = [s for s in processor.shapes if not s.isdigit()]
            check(not bad, f"{what}: process() was given {bad[0] if bad else ''}; expected a 1-D float numpy array")
            narrow = [int(s) for s in processor.shapes if int(s) < vocab]
            check(
                not narrow,
                f"{what}: process() was given logits of {narrow[0] if narrow else 0} columns, fewer than the "
                f"guidance tokenizer's {vocab} tokens; its vocabulary must not be wider than the logits",
            )
            check(
                processor.accepted == processor.script[: len(processor.accepted)],
                f"{what}: the processor left only the tokens {processor.script} (the script {word!r}, then end of "
                f"sequence) one step at a time, but accept() was told {processor.accepted}: pick the token from the "
                "logits as process() left them",
            )
            check(
                got.finish == "stop" and len(processor.accepted) == steps,
                f"{what}: after the tokens of {word!r} the processor left only the guidance tokenizer's "
                f"end-of-sequence token {eos}, yet the request {got.describe()} did not end there: "
                "guidance_tokenizer must name the token the backend stops on",
            )
            check(
                got.text.strip() == word.strip(),
                f"{what}: the backend picked the tokens {processor.script[:-1]} the processor allowed, which the "
                f"guidance tokenizer spells {word!r}, but its text is {got.text!r}: the guidance tokenizer numbers "
                "tokens differently from the model",
            )

        alone, processor, word = scripted("Madrid")
        verify("a greedy request alone", conformance.run([alone])[0], processor, word)
        if sampled:
            alone, processor, word = scripted("Paris", **sampled)
            verify("a sampled request (temperature=1.0) alone", conformance.run([alone])[0], processor, word)
        first, first_processor, first_word = scripted("Madrid")
        last, last_processor, last_word = scripted("Paris", **sampled)
        free = conformance.request(probe.messages, PROBE_TOKENS)
        batch = conformance.run([first, free, last])
        verify("request 0 of a batch of 3", batch[0], first_processor, first_word)
        verify("request 2 of a batch of 3", batch[2], last_processor, last_word)
        check(
            batch[1].same_as(probe.answer),
            f"request 1 of a batch of 3, the only one without a logits processor, gives {batch[1].describe()}, alone "
            f"{probe.answer.describe()}: rows without a processor must be left alone",
        )

    @clause("guided_json_schema")
    def test_guided_json_schema(self, conformance: Harness) -> None:
        """JSON-schema answers that end with 'stop' follow their schema: alone, n=2, batched and streamed."""
        limit = _budget(conformance, _JSON_PROMPT, _JSON_TOKENS)
        ended = total = 0
        for name in SCHEMAS:
            request = conformance.chat(_JSON_PROMPT, max_tokens=limit, response_format=_json_format(name))
            text, finish, _ = _choice(conformance.predict(request))
            ended += _check_json(f"the answer to the {name} schema", text, finish, SCHEMAS[name])
            total += 1
        sampled = {"temperature": 1.0, "seed": 7} if Capability.SAMPLING in conformance.capabilities() else {}
        request = conformance.chat(
            _JSON_PROMPT, max_tokens=limit, n=2, response_format=_json_format("nested object"), **sampled
        )
        both = conformance.predict(request)
        check(len(both.get("choices", [])) == 2, f"n=2 returned {len(both.get('choices', []))} choice(s)")
        for i in range(2):
            text, finish, _ = _choice(both, i)
            ended += _check_json(f"choice {i} of n=2 (nested object schema)", text, finish, SCHEMAS["nested object"])
            total += 1
        prompts = [_JSON_PROMPT, *PROMPTS[:2]]
        rows = [
            conformance.chat(m, max_tokens=_budget(conformance, m, _JSON_TOKENS), response_format=_json_format("array"))
            for m in prompts
        ]
        out = conformance.pyfunc().predict(rows)
        check(len(out) == len(rows), f"predict of {len(rows)} rows returned {len(out)} responses")
        for i, response in enumerate(out):
            text, finish, _ = _choice(response)
            ended += _check_json(f"row {i} of a batch of {len(rows)} (array schema)", text, finish, SCHEMAS["array"])
            total += 1
        for name in ("anyOf", "optional fields"):
            request = conformance.chat(_JSON_PROMPT, max_tokens=limit, response_format=_json_format(name))
            text, finish, _ = _stream(conformance, request)
            ended += _check_json(f"the streamed answer to the {name} schema", text, finish, SCHEMAS[name])
            total += 1
        check(
            ended > 0,
            f"none of the {total} answers ended by itself within max_tokens={limit}, although every schema's "
            "answers are far shorter: once the JSON is complete the grammar leaves only the guidance tokenizer's "
            f"end-of-sequence token; {_HOW}",
        )

    @clause("guided_mixed_batch")
    def test_guided_mixed_batch(self, conformance: Harness) -> None:
        """One batch: two schemas, JSON mode, a tool call and a free request; each follows its own grammar."""
        probe = conformance.probe()
        limit = _budget(conformance, _JSON_PROMPT, _JSON_TOKENS)
        free = conformance.chat(probe.messages, max_tokens=PROBE_TOKENS)
        rows: list[tuple[str, dict[str, Any]]] = [
            ("enum", conformance.chat(_JSON_PROMPT, max_tokens=limit, response_format=_json_format("enum"))),
            ("free", free),
            ("anyOf", conformance.chat(_JSON_PROMPT, max_tokens=limit, response_format=_json_format("anyOf"))),
            ("json_object", conformance.chat(_JSON_PROMPT, max_tokens=limit, response_format={"type": "json_object"})),
        ]
        tool = conformance.chat(_TOOL_PROMPT, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
        tool["max_tokens"], too_short = _tool_room(conformance, tool)
        if not too_short:  # a context too short for the tools' prompt: the batch goes without a tool row
            rows.insert(3, ("tool", tool))
        alone = content(conformance.predict(free))
        out = conformance.pyfunc().predict([request for _, request in rows])
        check(len(out) == len(rows), f"predict of {len(rows)} rows returned {len(out)} responses")
        kinds = ", ".join(kind for kind, _ in rows)
        ended = 0
        for i, ((kind, _), response) in enumerate(zip(rows, out, strict=True)):
            what = f"row {i} ({kind}) of a batch of {len(rows)} rows ({kinds})"
            text, finish, calls = _choice(response)
            if kind == "free":
                check(
                    text == alone,
                    f"{what} has no grammar and gives {text!r}, alone {alone!r}: another row's logits processor "
                    "reached it; process each row's logits with that row's processor only",
                )
            elif kind == "tool":
                ended += _check_calls(what, finish, text, calls, [t["function"]["name"] for t in TOOLS], one=True)
            elif kind == "json_object":
                ended += _check_json(what, text, finish, {"type": "object"})
            else:
                ended += _check_json(what, text, finish, SCHEMAS[kind])
        check(
            ended > 0,
            f"none of the guided rows of a batch ({kinds}) ended by itself within max_tokens: once an answer is "
            f"complete its grammar leaves only the end-of-sequence token; {_HOW}",
        )

    @clause("guided_tool_choice")
    def test_guided_tool_choice(self, conformance: Harness) -> None:
        """tool_choice 'required' and a named function give well-formed calls, alone, with n=2 and streamed."""
        names = [t["function"]["name"] for t in TOOLS]
        base = conformance.chat(_TOOL_PROMPT, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
        base["max_tokens"], too_short = _tool_room(conformance, base)
        if too_short:
            pytest.skip(too_short)
        named = {"type": "function", "function": {"name": "flag"}}
        cases: list[tuple[str, dict[str, Any], list[str], bool]] = [
            ("tool_choice 'required' with parallel_tool_calls false", base, names, True),
            ("tool_choice 'required'", {**base, "parallel_tool_calls": True}, names, False),
            ("tool_choice naming 'flag'", {**base, "tool_choice": named, "parallel_tool_calls": True}, ["flag"], False),
        ]
        ended = total = 0
        for what, request, allowed, one in cases:
            text, finish, calls = _choice(conformance.predict(request))
            ended += _check_calls(f"the answer to {what}", finish, text, calls, allowed, one=one)
            total += 1
        if Capability.SAMPLING in conformance.capabilities():
            both = conformance.predict({**base, "n": 2, "temperature": 1.0, "seed": 7, "tool_choice": named})
            check(len(both.get("choices", [])) == 2, f"n=2 returned {len(both.get('choices', []))} choice(s)")
            for i in range(2):
                text, finish, calls = _choice(both, i)
                ended += _check_calls(f"choice {i} of n=2 naming 'flag'", finish, text, calls, ["flag"], one=True)
                total += 1
        text, finish, calls = _stream(conformance, base)
        ended += _check_calls("the streamed answer to tool_choice 'required'", finish, text, calls, names, one=True)
        total += 1
        check(
            ended > 0,
            f"none of the {total} answers with calls required ended by itself within max_tokens={base['max_tokens']}, "
            "although one call is far shorter: after a whole call the grammar leaves only the end-of-sequence "
            f"token; {_HOW}",
        )

    @clause("guided_refused")
    def test_guided_refused(self, conformance: Harness) -> None:
        """Without guided_decoding, JSON response formats and tools are refused naming the field and the backend."""
        from mlflow.exceptions import MlflowException

        name = conformance.backend_name
        cases: list[tuple[str, dict[str, Any]]] = [
            ("response_format", {"response_format": _json_format("enum")}),
            ("response_format", {"response_format": {"type": "json_object"}}),
            ("tools", {"tools": TOOLS}),
            ("tools", {"tools": TOOLS, "tool_choice": "required"}),
        ]
        problems = []
        for field_name, extra in cases:
            request = conformance.chat(_JSON_PROMPT, max_tokens=4, **extra)
            shown = ", ".join(f"{k}={json.dumps(v)[:60]}" for k, v in extra.items())
            try:
                response = conformance.predict(request)
            except MlflowException as exc:
                message = str(exc)
                if exc.error_code != "INVALID_PARAMETER_VALUE":
                    problems.append(f"{shown}: error code {exc.error_code}, expected INVALID_PARAMETER_VALUE")
                elif f"'{field_name}'" not in message or f"backend {name!r}" not in message:
                    problems.append(
                        f"{shown}: the error does not name field {field_name!r} and backend {name!r}: {exc}"
                    )
            except Exception as exc:
                problems.append(f"{shown}: raised {type(exc).__name__}: {exc} instead of MlflowException")
            else:
                problems.append(
                    f"{shown}: answered {_shown(content(response), 80)} without the grammar the field asks for; "
                    f"expected an error naming {field_name!r}"
                )
        check(not problems, "; ".join(problems))

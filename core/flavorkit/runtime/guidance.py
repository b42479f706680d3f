"""Guided decoding: a request's ``response_format`` and tools as one llguidance grammar, applied as a logits mask.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

Where things happen (docs/architecture.md, "Structured output and tools"):

- :func:`build_grammar` turns the request's fields into one Lark grammar (llguidance's dialect,
  JSON schemas embedded with ``%json``). It is pure text: no tokenizer is needed, so the grammar
  is checked, with the path of a bad schema keyword, while the request is validated.
- :class:`Guidance`, one per loaded model, compiles a grammar against the model's vocabulary
  (the backend's ``guidance_tokenizer`` hook) once and keeps the compiled matcher (by grammar
  text, least recently used first out); each choice gets a copy (a few microseconds).
- :class:`Guide` is the :class:`~flavorkit.types.LogitsProcessor` a backend calls at every step:
  the grammar's mask first, then the request's ``logit_bias`` and penalties
  (:class:`SamplingAdjustments`), which need no grammar.

Why a mask in Python and not onnxruntime-genai's own ``set_guidance``: that grammar belongs to a
whole generator, so rows with different grammars could not share a batch, and 0.15 rebuilt its
tokenizer for every request (docs/design/structured-output.md has the measurements).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from flavorkit.errors import InvalidRequest

__all__ = [
    "GENERIC_TOOL_FORMAT",
    "MAX_SCHEMA_BYTES",
    "MAX_TOOLS",
    "Grammar",
    "Guidance",
    "Guide",
    "SamplingAdjustments",
    "build_grammar",
]

log = logging.getLogger(__name__)

#: JSON compile options of every schema: no free whitespace, so a small model cannot loop on
#: newlines or spaces until ``max_tokens`` (answers are compact JSON).
_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}
#: The largest schema (``response_format`` or one tool's ``parameters``), as compact JSON.
MAX_SCHEMA_BYTES = 64 * 1024
#: The most tools one request may declare.
MAX_TOOLS = 128
#: Bounds on the work of compiling one grammar (llguidance's fuel units, not seconds), so that no
#: schema can stall the server: a grammar over them is refused as too complex.
_LIMITS: dict[str, int] = {"initial_lexer_fuel": 2_000_000, "step_lexer_fuel": 500_000, "max_grammar_size": 1_000_000}
#: Compiled grammars kept per loaded model.
_CACHE_SIZE = 64

#: The tool-call envelope of the hermes form (Qwen, SmolLM2's training data, many fine-tunes); the
#: generic form, for templates that do not render tools, uses it too.
CALL_OPEN, CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
#: What the generic form tells the model (the system message), ``{tools}`` one JSON line per tool.
GENERIC_TOOL_FORMAT = (
    "You can call functions. Their JSON signatures are listed below. To call one, answer with only:\n"
    + CALL_OPEN
    + '{{"name": <function name>, "arguments": <arguments as a JSON object>}}'
    + CALL_CLOSE
    + "\nFunctions:\n{tools}"
)

Kind = Literal["json", "tools", "auto"]


@dataclass(frozen=True, slots=True)
class Grammar:
    """One request's grammar: the Lark text, what its output means, and the tools it may call."""

    lark: str
    #: ``json``: the content is JSON; ``tools``: the answer is tool calls only; ``auto``: text or calls.
    kind: Kind
    tool_names: tuple[str, ...] = ()
    #: The ``response_format`` schema, to validate a finished answer against.
    schema: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        """The compiled-grammar cache key: a digest of the text."""
        return hashlib.sha256(self.lark.encode()).hexdigest()


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists ``properties`` but says nothing of others closed to them.

    JSON Schema lets such an object carry any other key, and a small model, free to invent keys,
    often does until ``max_tokens``. Closing it only narrows what is generated: an answer valid
    for the closed schema is valid for the request's own. (OpenAI's strict mode asks the caller
    to write ``"additionalProperties": false`` for the same reason.)
    """
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _NAMED and isinstance(value, dict):
            out[key] = {name: closed(sub) for name, sub in value.items()}
        elif (key in _LISTED and isinstance(value, list)) or (key == "items" and isinstance(value, list)):
            out[key] = [closed(sub) for sub in value]
        elif key in _SINGLE and isinstance(value, dict):
            out[key] = closed(value)
        else:
            out[key] = value
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _json_block(schema: Mapping[str, Any]) -> str:
    """``%json {...}``: a schema (objects closed, :func:`closed`) as a Lark rule body, compile options set."""
    schema = closed(schema)
    with_options = {**schema, "x-guidance": {**_JSON_OPTIONS, **dict(schema.get("x-guidance") or {})}}
    return "%json " + json.dumps(with_options, ensure_ascii=False, separators=(",", ":"))


def _call_schema(tools: Sequence[Mapping[str, Any]], only: str | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The JSON of one call: ``{"name": <const>, "arguments": <that tool's parameters>}``, one branch per tool."""
    branches, names = [], []
    for tool in tools:
        function = tool["function"]
        if only is not None and function["name"] != only:
            continue
        names.append(function["name"])
        branches.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": function["name"]},
                    "arguments": function.get("parameters") or {"type": "object"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return schema, tuple(names)


def build_grammar(
    response_format: Mapping[str, Any] | None,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    parallel_tool_calls: bool = True,
) -> Grammar | None:
    """The grammar of a validated request, or None when its decoding is free.

    - ``response_format`` ``json_object`` / ``json_schema``: the whole content is that JSON;
    - ``tool_choice`` ``"required"`` or a named function: one call (more with ``parallel_tool_calls``);
    - ``"auto"`` (the default with tools): free text that does not open with ``<``, or calls; with a
      JSON ``response_format``, that JSON or calls. A started call is always well formed.
    """
    schema: Mapping[str, Any] | None = None
    if response_format is not None and response_format.get("type") == "json_object":
        schema = {"type": "object"}
    elif response_format is not None and response_format.get("type") == "json_schema":
        schema = response_format["json_schema"].get("schema") or {"type": "object"}
    mode = "auto" if tools and tool_choice is None else tool_choice
    if not tools or mode == "none":
        return None if schema is None else Grammar("start: " + _json_block(schema) + "\n", "json", schema=schema)
    only = mode["function"]["name"] if isinstance(mode, Mapping) else None
    call, names = _call_schema(tools, only)
    lines = [
        "calls: call" + ("+" if parallel_tool_calls else ""),
        f"call: {json.dumps(CALL_OPEN)} call_json {json.dumps(CALL_CLOSE)}",
        "call_json: " + _json_block(call),
    ]
    if mode != "auto":
        return Grammar("\n".join(["start: calls", *lines]) + "\n", "tools", names)
    if schema is None:
        head = ["start: TEXT | calls", "TEXT: /[^<](.|\\n)*/"]
    else:
        head = ["start: answer | calls", "answer: " + _json_block(schema)]
    return Grammar("\n".join([*head, *lines]) + "\n", "auto", names, schema)


# -- checking a schema, with the path of what is wrong ----------------------------------------------

_NAMED = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_LISTED = ("anyOf", "oneOf", "allOf", "prefixItems")
_SINGLE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")


def _children(schema: Any, path: str) -> list[tuple[Any, str]]:
    """The sub-schemas of ``schema`` with their JSON pointers."""
    if not isinstance(schema, dict):
        return []
    out: list[tuple[Any, str]] = []
    for key in _NAMED:
        if isinstance(schema.get(key), dict):
            out += [(sub, f"{path}/{key}/{name}") for name, sub in schema[key].items()]
    for key in _LISTED:
        if isinstance(schema.get(key), list):
            out += [(sub, f"{path}/{key}/{i}") for i, sub in enumerate(schema[key])]
    out += [(schema[key], f"{path}/{key}") for key in _SINGLE if isinstance(schema.get(key), dict)]
    return out


def _limits() -> Any:
    import llguidance

    return llguidance.LLParserLimits(
        initial_lexer_fuel=_LIMITS["initial_lexer_fuel"],
        step_lexer_fuel=_LIMITS["step_lexer_fuel"],
        max_grammar_size=_LIMITS["max_grammar_size"],
    )


def check_schema(schema: Mapping[str, Any], field: str) -> None:
    """Raise :class:`InvalidRequest` naming ``field`` and the JSON pointer when llguidance cannot compile ``schema``.

    llguidance's messages (``Unimplemented keys: ["contains"]``) carry no location, so on a failure
    the sub-schemas are checked again (each with the root's ``$defs``, so local references still
    resolve) to find the deepest one that fails.
    """
    import llguidance

    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        raise InvalidRequest(field, f"the schema is {size} bytes of JSON", allowed=f"at most {MAX_SCHEMA_BYTES} bytes")

    def error(sub: Mapping[str, Any]) -> str:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(dict(sub), overrides=_JSON_OPTIONS)  # type: ignore[arg-type]
        return str(llguidance.LLMatcher.validate_grammar(grammar, limits=_limits()))

    try:
        message = error(schema)
    except ValueError as exc:
        raise InvalidRequest(field, f"not a JSON schema: {exc}", allowed="a JSON schema object") from None
    if not message:
        return
    defs = {key: schema[key] for key in ("$defs", "definitions") if key in schema}
    where, todo = "", [(schema, "")]
    while todo:
        node, path = todo.pop()
        for sub, sub_path in _children(node, path):
            if isinstance(sub, dict) and error({**defs, **sub}):
                where = sub_path
                todo.append((sub, sub_path))
    at = f" at {where}" if where else ""
    raise InvalidRequest(field, f"the schema cannot be used for guided decoding{at}: {message}")


# -- per model: compile once, copy per choice ------------------------------------------------------


class Guidance:
    """The compiled grammars of one loaded model, against its vocabulary (built on first use)."""

    def __init__(self, tokenizer: Callable[[], Any]) -> None:
        self._make_tokenizer = tokenizer
        self._tokenizer: Any = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        """The model's ``llguidance.LLTokenizer``, asked of the backend once."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._make_tokenizer()
            return self._tokenizer

    def matcher(self, grammar: Grammar) -> Any:
        """A fresh matcher for ``grammar``: a copy of the compiled one; a grammar that fails is a 400."""
        import llguidance

        tokenizer = self.tokenizer
        key = grammar.key
        with self._lock:
            template = self._compiled.get(key)
            if template is not None:
                self._compiled.move_to_end(key)
        if template is None:
            template = llguidance.LLMatcher(tokenizer, grammar.lark, log_level=0, limits=_limits())
            if template.is_error():
                field = "tools" if grammar.kind != "json" else "response_format"
                raise InvalidRequest(field, f"the grammar cannot be compiled: {template.get_error()}")
            with self._lock:
                self._compiled[key] = template
                while len(self._compiled) > _CACHE_SIZE:
                    self._compiled.popitem(last=False)
        return template.deep_copy()

    def guide(
        self, grammar: Grammar | None, adjustments: SamplingAdjustments | None, logprobs: int | None = None
    ) -> Guide:
        """The logits processor of one choice: ``grammar``'s mask, the adjustments, and log-probabilities.

        ``logprobs``: None records none; 0 the picked token's; ``k`` also the ``k`` likeliest.
        """
        matcher = self.matcher(grammar) if grammar is not None else None
        return Guide(matcher, self.tokenizer, adjustments, logprobs)


@dataclass(frozen=True, slots=True)
class SamplingAdjustments:
    """OpenAI's ``logit_bias``, ``presence_penalty`` and ``frequency_penalty`` of a request.

    As OpenAI defines them: a token's logit gets its bias added, then loses ``presence_penalty``
    once it has been generated and ``frequency_penalty`` for each time it has.
    """

    bias: Mapping[int, float]
    presence: float = 0.0
    frequency: float = 0.0

    @property
    def active(self) -> bool:
        """Whether these change any logit."""
        return bool(self.bias) or bool(self.presence) or bool(self.frequency)


class Guide:
    """One choice's :class:`~flavorkit.types.LogitsProcessor`: the grammar mask, bias and penalties."""

    __slots__ = (
        "_adjust",
        "_bias_ids",
        "_bias_values",
        "_counts",
        "_eos",
        "_last",
        "_mask",
        "_matcher",
        "_tokenizer",
        "_top",
        "_vocab",
        "failed",
        "logprobs",
    )

    def __init__(
        self, matcher: Any, tokenizer: Any, adjustments: SamplingAdjustments | None, logprobs: int | None = None
    ) -> None:
        import numpy as np

        self._matcher = matcher
        self._tokenizer = tokenizer
        #: How many alternatives each log-probability entry lists (None: no entries are recorded).
        self._top = logprobs
        self._last: Any = None
        #: OpenAI's ``logprobs.content`` entries of the tokens picked so far (the end of sequence left out).
        self.logprobs: list[dict[str, Any]] = []
        self._vocab = int(tokenizer.vocab_size)
        self._eos = int(tokenizer.eos_token)
        self._mask: Any = None
        if matcher is not None:
            import llguidance.numpy as lnp

            self._mask = lnp.allocate_token_bitmask(1, self._vocab)
        self._adjust = adjustments if adjustments is not None and adjustments.active else None
        self._counts: dict[int, int] = {}
        ids = sorted(adjustments.bias) if adjustments is not None else []
        self._bias_ids = np.asarray(ids, dtype=np.int64)
        self._bias_values = np.asarray([adjustments.bias[i] for i in ids] if adjustments else [], dtype=np.float32)
        #: True once the grammar rejected a token or reached a dead end: the answer was ended.
        self.failed = False

    def process(self, logits: Any) -> None:
        """Mask what the grammar forbids next, then apply the bias and penalties (in place, one row)."""
        import numpy as np

        if self._adjust is not None:
            width = logits.shape[-1]
            keep = self._bias_ids < width
            logits[self._bias_ids[keep]] += self._bias_values[keep]
            for token, count in self._counts.items():
                if token < width:
                    logits[token] -= self._adjust.presence + self._adjust.frequency * count
        if self._matcher is not None:
            self._apply_grammar(logits)
        if self._top is not None:
            self._last = np.array(logits, dtype=np.float64)  # the distribution the token is picked from

    def _apply_grammar(self, logits: Any) -> None:
        import llguidance.numpy as lnp
        import numpy as np

        matcher = self._matcher
        if matcher.is_error():
            self._only_eos(logits)
            return
        lnp.fill_next_token_bitmask(matcher, self._mask, 0)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: min(self._vocab, logits.shape[-1])]
        row = logits[: allowed.shape[0]]
        row[allowed == 0] = -np.inf
        logits[allowed.shape[0] :] = -np.inf
        if not allowed.any():  # a dead end: end the answer rather than pick a forbidden token
            self.failed = True
            self._only_eos(logits)

    def _only_eos(self, logits: Any) -> None:
        import numpy as np

        logits[:] = -np.inf
        logits[self._eos] = 0.0

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        data = bytes(self._tokenizer.decode_bytes([token]))
        return {"token": data.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(data)}

    def _record(self, token: int) -> None:
        """The log-probability entry of ``token`` and of the likeliest alternatives, from the last ``process``."""
        import numpy as np

        row, self._last = self._last, None
        if row is None or token >= min(row.shape[0], self._vocab) or self._tokenizer.is_special_token(token):
            return  # the end of sequence (or another special token) is not part of the content
        row = row[: self._vocab]
        peak = row.max()
        logsum = peak + np.log(np.exp(row - peak).sum())
        entry = self._entry(token, float(row[token] - logsum))
        top: list[dict[str, Any]] = []
        if self._top:
            k = min(self._top, row.shape[0])
            best = np.argpartition(-row, k - 1)[:k]
            best = best[np.argsort(-row[best], kind="stable")]
            top = [self._entry(int(t), float(row[t] - logsum)) for t in best if np.isfinite(row[t])]
        entry["top_logprobs"] = top
        self.logprobs.append(entry)

    def accept(self, token: int) -> None:
        """Advance the grammar by the picked token, count it for the penalties, record its log-probability."""
        token = int(token)
        if self._top is not None:
            self._record(token)
        if self._adjust is not None:
            self._counts[token] = self._counts.get(token, 0) + 1
        if self._matcher is None or self._matcher.is_error():
            return
        if not self._matcher.consume_token(token) and token != self._eos:
            self.failed = True
            log.warning("guided decoding: token %d broke the grammar: %s", token, self._matcher.get_error())


# -- reading tool calls back out of the text --------------------------------------------------------


def tool_call_id() -> str:
    """A fresh tool call id, ``call_`` and 24 hex digits, as OpenAI's look."""
    return "call_" + uuid.uuid4().hex[:24]


_CALL = re.compile(re.escape(CALL_OPEN.strip()) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE.strip()), re.S)


def parse_calls(text: str, tool_names: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    """``(content, [(name, arguments JSON)])`` of an answer: hermes ``<tool_call>`` blocks, or one bare JSON call.

    A bare JSON answer ``{"name": ..., "arguments": {...}}`` naming a declared tool is read as a
    call too (the generic JSON form that models without tool training often produce). A block that
    does not parse is left in the content (``max_tokens`` cut it: ``finish_reason`` says so).
    """
    calls: list[tuple[str, str]] = []

    def take(body: str) -> bool:
        try:
            obj = json.loads(body)
        except ValueError:
            return False
        if not (isinstance(obj, dict) and obj.get("name") in tool_names and isinstance(obj.get("arguments"), dict)):
            return False
        calls.append((obj["name"], json.dumps(obj["arguments"], ensure_ascii=False)))
        return True

    rest = _CALL.sub(lambda m: "" if take(m.group(1)) else m.group(0), text)
    if not calls and rest.strip().startswith("{") and take(rest.strip()):
        rest = ""
    return rest.strip() if calls else text, calls


# -- for backends (exported by flavorkit.sdk) --------------------------------------------------------


def guidance_tokenizer_from_hf(tokenizer: Any, n_vocab: int | None = None) -> Any:
    """An ``llguidance.LLTokenizer`` from a ``transformers`` tokenizer; ``n_vocab``: the model's logits width."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)


def guidance_tokenizer_from_file(path: str, eos_token: int, n_vocab: int | None = None) -> Any:
    """An ``llguidance.LLTokenizer`` from a Hugging Face ``tokenizer.json`` file and the id the backend stops on."""
    import llguidance

    return llguidance.LLTokenizer(str(path), n_vocab=n_vocab, eos_token=int(eos_token))


def process_logits(requests: Sequence[Any], logits: Any) -> bool:
    """Run each request's logits processor on its row of ``logits`` (batch x vocabulary, in place).

    Rows of requests without one are left alone; returns whether any row was processed (a backend
    that copies logits into its runtime can skip the copy when none was).
    """
    done = False
    for k, request in enumerate(requests):
        processor = getattr(request, "logits_processor", None)
        if processor is not None and not request.cancelled:
            processor.process(logits[k])
            done = True
    return done


def accept_tokens(requests: Sequence[Any], tokens: Sequence[int]) -> None:
    """Tell each request's logits processor the token picked for it (``tokens[k]`` for ``requests[k]``)."""
    for request, token in zip(requests, tokens, strict=False):
        processor = getattr(request, "logits_processor", None)
        if processor is not None:
            processor.accept(int(token))

"""Prototype of the core side: OpenAI request fields -> ONE llguidance grammar (Lark text with %json).

Pure Python + json: no llguidance import needed to *build* a grammar; llguidance is only used to
validate it (``check``) and by backends to compile it. The same Lark text is accepted by
``llguidance.LLMatcher(tokenizer, text)`` and by onnxruntime-genai's
``GeneratorParams.set_guidance("lark_grammar", text)`` (0.15.2 and 0.18.0).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

#: JSON compile options put into every %json block: no free whitespace (stops newline/space loops on
#: small models; output is compact JSON with "," and ":" separators).
X_GUIDANCE = {"whitespace_flexible": False}

#: hermes / Qwen2.5 / Qwen3 tool-call envelope (plain text for SmolLM2; one added token each on Qwen)
HERMES_OPEN, HERMES_CLOSE = "<tool_call>\n", "\n</tool_call>"


class GrammarError(ValueError):
    """A request's schema/tools cannot be turned into a grammar (-> HTTP 400)."""

    def __init__(self, message: str, param: str, path: str = "") -> None:
        super().__init__(f"{param}{path}: {message}")
        self.param, self.path, self.message = param, path, message


@dataclass(frozen=True)
class Grammar:
    """What the core hands a backend: the grammar text, a cache key and how to read the output back."""

    lark: str
    kind: str  # "json" | "tools" | "auto"
    tool_names: tuple[str, ...] = ()
    key: str = field(default="", compare=False)

    @staticmethod
    def make(lark: str, kind: str, tool_names: tuple[str, ...] = ()) -> "Grammar":
        return Grammar(lark, kind, tool_names, hashlib.sha256(lark.encode()).hexdigest()[:16])


def _lark_str(s: str) -> str:
    """A Lark string literal (JSON escaping is valid Lark escaping for these)."""
    return json.dumps(s)


def _json_block(schema: dict[str, Any], *, lenient: bool) -> str:
    s = dict(schema)
    xg = dict(X_GUIDANCE)
    if lenient:
        xg["lenient"] = True
    xg.update(s.get("x-guidance") or {})  # a caller-supplied x-guidance wins
    s["x-guidance"] = xg
    return "%json " + json.dumps(s, ensure_ascii=False, separators=(",", ":"))


def _response_schema(response_format: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
    """(schema, strict) for response_format, or (None, False) when it asks for plain text."""
    if not response_format:
        return None, False
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None, False
    if kind == "json_object":
        return {"type": "object"}, False
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise GrammarError("must be an object", "response_format.json_schema.schema")
        return schema, bool(spec.get("strict", False))
    raise GrammarError(f"unknown type {kind!r}", "response_format.type")


def _tool_call_schema(tools: list[dict[str, Any]], only: str | None) -> tuple[dict[str, Any], tuple[str, ...], bool]:
    """anyOf of {"name": const, "arguments": <that tool's parameters>} per tool (so arguments match name)."""
    alts, names, strict_any = [], [], False
    for i, tool in enumerate(tools):
        if tool.get("type", "function") != "function":
            raise GrammarError(f"unsupported tool type {tool.get('type')!r}", f"tools[{i}].type")
        fn = tool.get("function") or {}
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise GrammarError("must be 1-64 of a-z, A-Z, 0-9, _, ., -", f"tools[{i}].function.name")
        if only is not None and name != only:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        strict_any |= bool(fn.get("strict", False))
        names.append(name)
        alts.append({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    if only is not None and not names:
        raise GrammarError(f"no tool named {only!r} in tools", "tool_choice.function.name")
    schema = alts[0] if len(alts) == 1 else {"anyOf": alts}
    return schema, tuple(names), strict_any


def build(
    *,
    response_format: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    parallel_tool_calls: bool = True,
    constrain_auto: bool = True,
) -> Grammar | None:
    """One grammar for the request, or None when generation is unconstrained.

    - response_format json_object/json_schema      -> ``start: %json {...}``
    - tool_choice "required" / {"function": {...}} -> ``start: tool_call+`` (hermes envelope)
    - tool_choice "auto" (constrain_auto)          -> ``start: (TEXT | <json response> | tool_call+)``
    - tool_choice "none" or no tools               -> response_format alone
    """
    schema, strict = _response_schema(response_format)
    tools = tools or []
    if tool_choice is None:
        tool_choice = "auto" if tools else "none"
    if tool_choice != "none" and not tools:
        raise GrammarError("tool_choice needs tools", "tool_choice")

    only = None
    if isinstance(tool_choice, dict):
        only = (tool_choice.get("function") or {}).get("name")
        if not only:
            raise GrammarError("must name a function", "tool_choice.function.name")
        mode = "required"
    elif tool_choice in ("auto", "required", "none"):
        mode = tool_choice
    else:
        raise GrammarError(f"unknown value {tool_choice!r}", "tool_choice")

    if mode == "none" or (mode == "auto" and not constrain_auto):
        if schema is None:
            return None
        return Grammar.make("start: " + _json_block(schema, lenient=not strict) + "\n", "json")

    call_schema, names, tools_strict = _tool_call_schema(tools, only)
    rep = "+" if parallel_tool_calls else ""
    lines = [
        f"tool_calls: tool_call{rep}",
        f"tool_call: {_lark_str(HERMES_OPEN)} call_json {_lark_str(HERMES_CLOSE)}",
        "call_json: " + _json_block(call_schema, lenient=not tools_strict),
    ]
    if mode == "required":
        return Grammar.make("\n".join(["start: tool_calls", *lines]) + "\n", "tools", names)
    # auto: free text (not starting with "<", so it cannot open a tool call), or the JSON response when
    # response_format asks for one, or tool calls; the empty answer is allowed too.
    if schema is None:
        head = ["start: (TEXT | tool_calls)?", "TEXT: /[^<](.|\\n)*/"]
    else:
        head = ["start: response | tool_calls", "response: " + _json_block(schema, lenient=not strict)]
    return Grammar.make("\n".join([*head, *lines]) + "\n", "auto", names)


_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def parse_output(grammar: Grammar | None, text: str) -> dict[str, Any]:
    """Turn generated text back into an OpenAI assistant message (content / tool_calls)."""
    if grammar is None or grammar.kind == "json":
        return {"role": "assistant", "content": text}
    calls = []
    for i, m in enumerate(_CALL.finditer(text)):
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            continue  # a call cut by max_tokens: finish_reason "length" already tells
        calls.append({"id": f"call_{i}", "type": "function",
                      "function": {"name": obj["name"], "arguments": json.dumps(obj["arguments"], ensure_ascii=False)}})
    if not calls:
        return {"role": "assistant", "content": text}
    rest = _CALL.sub("", text).strip()
    return {"role": "assistant", "content": rest or None, "tool_calls": calls}


# -- validation with a path -------------------------------------------------------------------------

_CHILDREN = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SINGLE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")


def _subschemas(schema: Any, path: str):
    if not isinstance(schema, dict):
        return
    for k in _CHILDREN:
        for name, sub in (schema.get(k) or {}).items() if isinstance(schema.get(k), dict) else ():
            yield sub, f"{path}/{k}/{name}"
    for k in _LISTS:
        for i, sub in enumerate(schema.get(k) or []) if isinstance(schema.get(k), list) else ():
            yield sub, f"{path}/{k}/{i}"
    for k in _SINGLE:
        if isinstance(schema.get(k), dict):
            yield schema[k], f"{path}/{k}"


def check_schema(schema: dict[str, Any], *, lenient: bool, param: str, tokenizer: Any = None) -> None:
    """Raise GrammarError (message + JSON pointer) if llguidance cannot compile ``schema``.

    llguidance's own messages ('Unimplemented keys: ["contains"]', 'Invalid type: foo') carry no
    location, so on failure the sub-schemas are re-validated (each with the root's $defs, so local
    $refs still resolve) to find the deepest one that fails.
    """
    import llguidance as llg

    opts = {"lenient": True} if lenient else None

    def err(s: dict[str, Any]) -> str:
        return llg.LLMatcher.validate_grammar(llg.LLMatcher.grammar_from_json_schema(s, overrides=opts), tokenizer)

    message = err(schema)
    if not message:
        return
    defs = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    where, todo = "", [(schema, "")]
    while todo:
        node, path = todo.pop()
        for sub, sub_path in _subschemas(node, path):
            if isinstance(sub, dict) and err({**defs, **sub}):
                where = sub_path
                todo.append((sub, sub_path))
    raise GrammarError(message, param, where and f" at {where}")


def check_request(grammar_inputs: dict[str, Any], tokenizer: Any = None) -> Grammar | None:
    """build() + validate each schema with a path; the whole grammar is validated at the end."""
    import llguidance as llg

    g = build(**grammar_inputs)
    if g is None:
        return None
    schema, strict = _response_schema(grammar_inputs.get("response_format"))
    if schema is not None:
        check_schema(schema, lenient=not strict, param="response_format.json_schema.schema", tokenizer=tokenizer)
    for i, tool in enumerate(grammar_inputs.get("tools") or []):
        fn = tool.get("function") or {}
        if fn.get("parameters"):
            check_schema(fn["parameters"], lenient=not fn.get("strict"), param=f"tools[{i}].function.parameters",
                         tokenizer=tokenizer)
    message = llg.LLMatcher.validate_grammar(g.lark, tokenizer)
    if message:
        raise GrammarError(message, "grammar")
    return g

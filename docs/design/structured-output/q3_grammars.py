"""Q3: OpenAI fields -> one llguidance grammar; validation with paths; compile cost cold vs reuse.

Run: ../../../.venv/bin/python q3_grammars.py   (or .venv-current)
"""
from __future__ import annotations

import json
import time

import common
import grammars as G
import llguidance as llg
import llguidance.hf
from transformers import AutoTokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["query"], "additionalProperties": False}}}
TOOLS = [WEATHER, SEARCH]
RF_SCHEMA = {"type": "json_schema", "json_schema": {"name": "profile", "schema": common.SCHEMA, "strict": True}}

CASES = {
    "json_object": dict(response_format={"type": "json_object"}),
    "json_schema": dict(response_format=RF_SCHEMA),
    "required": dict(tools=TOOLS, tool_choice="required"),
    "required_single_call": dict(tools=TOOLS, tool_choice="required", parallel_tool_calls=False),
    "named": dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search"}}),
    "auto": dict(tools=TOOLS, tool_choice="auto"),
    "auto+json_schema": dict(tools=TOOLS, tool_choice="auto", response_format=RF_SCHEMA),
    "none+json_object": dict(tools=TOOLS, tool_choice="none", response_format={"type": "json_object"}),
    "text": dict(response_format={"type": "text"}),
}

CALL_W = '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}}\n</tool_call>'
CALL_S = '<tool_call>\n{"name":"search","arguments":{"query":"llguidance","limit":3}}\n</tool_call>'
CALL_MIXED = '<tool_call>\n{"name":"get_weather","arguments":{"query":"x"}}\n</tool_call>'
SAMPLES = {
    "free text": "Sure, it is sunny in Paris today.",
    "empty": "",
    "weather call": CALL_W,
    "two calls": CALL_W + CALL_S,
    "name/args mismatch": CALL_MIXED,
    "json profile": json.dumps(json.loads('{"name":"A","age":3,"address":{"city":"P"},"hobbies":["x"],"role":"user","contact":null}'),
                               separators=(",", ":")),
    "spaced json": '{"a": 1}',
    "compact json": '{"a":1}',
}


def accepts(lt, grammar: str, text: str) -> str:
    m = llg.LLMatcher(lt, grammar)
    toks = lt.tokenize_str(text)
    n = m.try_consume_tokens(toks)
    if n < len(toks):
        return f"rejected@{n}/{len(toks)}"
    return "ACCEPT" if m.is_accepting() else "prefix-only"


def main() -> None:
    hft = AutoTokenizer.from_pretrained(common.paths()["hf"])
    t = time.perf_counter()
    lt = llguidance.hf.from_tokenizer(hft)
    print(f"llguidance {llg.__version__}; from_tokenizer: {1000 * (time.perf_counter() - t):.0f} ms; load {common.loadavg()}")

    print("\n== grammars built from OpenAI fields, accept/reject matrix ==")
    built = {}
    for name, kw in CASES.items():
        g = G.build(**kw)
        built[name] = g
        if g is None:
            print(f"{name:22s} -> None (unconstrained)")
            continue
        print(f"{name:22s} kind={g.kind:5s} key={g.key} {len(g.lark)} chars  tools={g.tool_names}")
        row = {s: accepts(lt, g.lark, txt) for s, txt in SAMPLES.items()}
        print("   " + "  ".join(f"{s}={r}" for s, r in row.items()))
    print("\nexample (required):\n" + built["required_single_call"].lark)
    print("example (auto), head:\n" + "\n".join(built["auto"].lark.splitlines()[:3]))

    print("\n== parse_output ==")
    print(json.dumps(G.parse_output(built["auto"], "ok " + CALL_W)))
    print(json.dumps(G.parse_output(built["auto"], "Just text.")))

    print("\n== compile cost (ms, median of 5; fresh process state after the first) ==")
    for name in ("json_schema", "required", "auto", "auto+json_schema"):
        g = built[name].lark
        t0 = time.perf_counter(); e = llg.LLMatcher.validate_grammar(g, lt); v = time.perf_counter() - t0
        times, copies, resets = [], [], []
        for _ in range(5):
            t0 = time.perf_counter(); m = llg.LLMatcher(lt, g); times.append(time.perf_counter() - t0)
            assert not m.is_error(), m.get_error()
        tmpl = llg.LLMatcher(lt, g)
        mask_first = None
        for _ in range(5):
            t0 = time.perf_counter(); c = tmpl.deep_copy(); copies.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); c.compute_bitmask(); mask_first = time.perf_counter() - t0
        prefix = lt.tokenize_str(SAMPLES["json profile"] if name == "json_schema" else CALL_W)[:8]
        for _ in range(5):
            assert m.consume_tokens(prefix), m.get_error()
            t0 = time.perf_counter(); m.reset(); resets.append(time.perf_counter() - t0)
        print(f"{name:18s} validate={v*1e3:6.2f} new LLMatcher: first={times[0]*1e3:6.2f} med={common.med(times)*1e3:6.2f}"
              f"  deep_copy med={common.med(copies)*1e3:6.3f}  reset={common.med(resets)*1e3:6.3f}"
              f"  first mask of copy={mask_first*1e3:6.2f} err={e!r}")

    print("\n== big tool list (20 tools x 6 params) ==")
    big = []
    for i in range(20):
        big.append({"type": "function", "function": {"name": f"tool_{i}", "parameters": {
            "type": "object", "additionalProperties": False, "required": ["a", "b"],
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"enum": ["x", "y", "z"]},
                           "d": {"type": "array", "items": {"type": "number"}}, "e": {"type": "boolean"},
                           "f": {"type": "object", "properties": {"g": {"type": "string"}}}}}}})
    for choice in ("required", "auto"):
        g = G.build(tools=big, tool_choice=choice).lark
        t0 = time.perf_counter(); m = llg.LLMatcher(lt, g); c1 = time.perf_counter() - t0
        t0 = time.perf_counter(); llg.LLMatcher(lt, g); c2 = time.perf_counter() - t0
        t0 = time.perf_counter(); m.compute_bitmask(); k = time.perf_counter() - t0
        print(f"{choice:8s} {len(g)} chars: compile first={c1*1e3:.1f} ms second={c2*1e3:.1f} ms first mask={k*1e3:.2f} ms err={m.get_error()!r}")

    print("\n== invalid schemas -> GrammarError with path ==")
    bad = {
        "unknown type": {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "strng"}}}}},
        "unimplemented keyword (strict)": {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
        "same, non-strict (lenient)": None,
        "dangling $ref": {"type": "object", "properties": {"x": {"$ref": "#/$defs/nope"}}},
        "bad regex": {"type": "object", "properties": {"z": {"type": "string", "pattern": "([a-z]"}}},
        "unsatisfiable": {"type": "object", "properties": {"q": {"allOf": [{"type": "string"}, {"type": "integer"}]}}},
    }
    for name, sch in bad.items():
        strict = name != "same, non-strict (lenient)"
        sch = sch or bad["unimplemented keyword (strict)"]
        rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": sch, "strict": strict}}
        try:
            G.check_request({"response_format": rf}, lt)
            print(f"{name:32s} OK (compiled)")
        except G.GrammarError as e:
            print(f"{name:32s} GrammarError: {e}")
    for kw in (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
               dict(tool_choice="required"), dict(response_format={"type": "yaml"})):
        try:
            G.build(**kw)
        except G.GrammarError as e:
            print(f"{'request error':32s} GrammarError: {e}")
    t0 = time.perf_counter()
    try:
        G.check_request({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"not": {"type": "string"}}}}, "strict": True}}], "tool_choice": "auto"}, lt)
    except G.GrammarError as e:
        print(f"{'tool params (strict)':32s} GrammarError: {e}  [{(time.perf_counter()-t0)*1e3:.1f} ms]")


if __name__ == "__main__":
    main()

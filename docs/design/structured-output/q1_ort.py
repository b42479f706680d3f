"""Q1: onnxruntime-genai guidance (og.GeneratorParams.set_guidance) on SmolLM2-135M int4.

Run with either venv:  ../../../.venv/bin/python q1_ort.py  |  ../../../.venv-current/bin/python q1_ort.py
"""
from __future__ import annotations

import json
import time

import common
import grammars as G
import llguidance as llg
import llguidance.hf
import llguidance.numpy as lnp
import numpy as np
import onnxruntime_genai as og
from q3_grammars import TOOLS
from transformers import AutoTokenizer

EOS = 2
P = common.paths()
model = og.Model(P["ort"])
tok = og.Tokenizer(model)


def enc(messages) -> list[int]:
    return [int(t) for t in tok.encode(tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True))]


def params(max_length: int, guidance: tuple[str, str] | None = None, batch_size: int = 1):
    p = og.GeneratorParams(model)
    p.set_search_options(max_length=max_length, do_sample=False, batch_size=batch_size)
    if guidance:
        p.set_guidance(*guidance)  # (type, data[, enable_ff_tokens=False])
    return p


def run(ids: list[int], guidance=None, max_new=200):
    """Greedy single row; returns (text, steps, next-token stream, sequence tail)."""
    g = og.Generator(model, params(len(ids) + max_new, guidance))
    g.append_tokens(np.asarray(ids, dtype=np.int32))
    stream = []
    while not g.is_done():
        g.generate_next_token()
        stream.append(int(g.get_next_tokens()[0]))
    gen = [int(t) for t in g.get_sequence(0)[len(ids):]]
    return tok.decode(np.asarray(gen, dtype=np.int32)), len(stream), stream, gen


def schema_json(flexible: bool | None, schema=common.SCHEMA) -> str:
    s = dict(schema)
    if flexible is not None:
        s["x-guidance"] = {"whitespace_flexible": flexible}
    return json.dumps(s)


def main() -> None:
    ids = enc(common.MESSAGES)
    print(f"onnxruntime-genai {og.__version__}; prompt {len(ids)} tokens; load {common.loadavg()}")

    print("\n== A. og.Generator creation cost (ms; guidance builds the llg tokenizer + grammar) ==")
    gs = ("json_schema", schema_json(False))
    plain, guided = [], []
    for _ in range(4):
        with common.Timer() as t:
            og.Generator(model, params(len(ids) + 64))
        plain.append(t.s)
        with common.Timer() as t:
            og.Generator(model, params(len(ids) + 64, gs))
        guided.append(t.s)
    print("unguided:", [round(x * 1e3, 1) for x in plain], " guided json_schema:", [round(x * 1e3, 1) for x in guided])
    other = ("json_schema", json.dumps({"type": "object", "properties": {"q": {"type": "string"}}}))
    with common.Timer() as t:
        og.Generator(model, params(len(ids) + 64, other))
    print(f"guided, a different schema after those: {t.s * 1e3:.1f} ms")

    print("\n== B. json_schema (nested object, array, enum, optional, anyOf), greedy ==")
    for flex in (None, False):
        text, steps, stream, gen = run(ids, ("json_schema", schema_json(flex)))
        print(f"x-guidance whitespace_flexible={flex}: steps={steps} -> {common.validate(text, common.SCHEMA)}\n   {text}")
    print("   EOS handling: last next_tokens", stream[-2:], "| EOS in get_sequence:", EOS in gen,
          "| steps - generated tokens =", steps - len(gen))

    print("\n== B2. whitespace loops: response_format json_object on prompts where SmolLM2 pretty-prints ==")
    for prompt in ("Give me a recipe for pancakes in JSON.", "Describe the weather in Paris as a JSON object."):
        pid = enc([{"role": "user", "content": prompt}])
        for flex in (None, False):
            text, steps, _, _ = run(pid, ("json_schema", schema_json(flex, {"type": "object"})), max_new=200)
            ws = sum(c in " \n\t\r" for c in text)
            longest = max((len(r) for r in text.replace("\t", " ").split("\n")), default=0)
            print(f"  flex={flex!s:5s} steps={steps:3d} whitespace chars={ws:4d} parses={common.validate(text, {}) == 'valid'!s:5s} "
                  f"tail={text[-40:]!r}")

    print("\n== B3. x-guidance separators (to match a template's tojson style) ==")
    xg = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    text, steps, _, _ = run(ids, ("json_schema", json.dumps(dict(common.SCHEMA, **{"x-guidance": xg}))))
    print(f"{xg}: steps={steps} {common.validate(text, common.SCHEMA)}\n   {text}")

    print("\n== B4. enable_ff_tokens=True (batch 1 only): forced tokens appended without a sampling call ==")
    for ff in (False, True):
        p = params(len(ids) + 200)
        p.set_guidance("json_schema", schema_json(False), ff)
        g = og.Generator(model, p)
        g.append_tokens(np.asarray(ids, dtype=np.int32))
        calls, t0 = 0, time.perf_counter()
        while not g.is_done():
            g.generate_next_token()
            calls += 1
        seq = g.get_sequence(0)[len(ids):]
        print(f"  enable_ff_tokens={ff!s:5s}: generate_next_token calls={calls} tokens={len(seq)} "
              f"{time.perf_counter() - t0:.2f}s {common.validate(tok.decode(seq), common.SCHEMA)}")

    print("\n== C. regex and lark_grammar ==")
    text, steps, _, _ = run(enc([{"role": "user", "content": "When did the Apollo 11 mission land on the moon?"}]),
                            ("regex", r"(19|20)\d{2}-\d{2}-\d{2}"))
    print(f"regex date: {text!r} steps={steps}")
    sys_tools = ("You can call these tools. To call one, answer with <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call>\n"
                 + "\n".join(json.dumps(t["function"]) for t in TOOLS))
    tid = enc([{"role": "system", "content": sys_tools}, {"role": "user", "content": "What's the weather in Paris, in celsius?"}])
    for choice in ("required", "auto", {"type": "function", "function": {"name": "search"}}):
        gr = G.build(tools=TOOLS, tool_choice=choice, parallel_tool_calls=False)
        text, steps, stream, _ = run(tid, ("lark_grammar", gr.lark), max_new=120)
        msg = G.parse_output(gr, text)
        print(f"tool_choice={json.dumps(choice)}: steps={steps} ended_with_eos={stream[-1] == EOS}\n   text={text!r}\n   parsed={json.dumps(msg)}")
    # the auto grammar: free text path (plain question)
    gr = G.build(tools=TOOLS, tool_choice="auto")
    text, steps, stream, _ = run(enc([{"role": "user", "content": "Say hello in French."}]), ("lark_grammar", gr.lark), max_new=60)
    print(f"auto, chit-chat prompt: steps={steps} eos={stream[-1] == EOS} text={text!r}")
    try:
        og.Generator(model, params(200, ("lark_grammar", "start: foo")))
    except Exception as e:  # noqa: BLE001
        print("invalid lark ->", type(e).__name__, str(e).splitlines()[0][:160])
    try:
        og.Generator(model, params(200, ("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "strng"}}}))))
    except Exception as e:  # noqa: BLE001
        print("invalid schema ->", type(e).__name__, str(e).splitlines()[0][:160])
    try:
        og.Generator(model, params(200, ("xml", "<a/>")))
    except Exception as e:  # noqa: BLE001
        print("unknown type ->", type(e).__name__, str(e).splitlines()[0][:160])

    print("\n== D. max_length cuts the grammar ==")
    text, steps, stream, _ = run(ids, ("json_schema", schema_json(False)), max_new=20)
    print(f"max_new=20: steps={steps} last token EOS={stream[-1] == EOS} text={text!r} -> {common.validate(text, common.SCHEMA)[:40]}")

    print("\n== E. batch_size > 1 with og's own guidance (same grammar on every row) ==")
    ids2 = enc([{"role": "user", "content": "Bob is 7, lives in Rome, plays football. He is a guest. No email. Give JSON."}])
    for label, prompts in (("identical prompts", [ids, ids]), ("different prompts", [ids, ids2])):
        width = max(map(len, prompts))
        arr = np.full((len(prompts), width), EOS, dtype=np.int32)  # right-padded, as flavorkit's og runtime does
        for k, p in enumerate(prompts):
            arr[k, : len(p)] = p
        g = og.Generator(model, params(width + 150, ("json_schema", schema_json(False)), batch_size=len(prompts)))
        g.append_tokens(arr)
        steps, ends = 0, {}
        try:
            while not g.is_done():
                g.generate_next_token()
                steps += 1
                for k, t in enumerate(g.get_next_tokens()):
                    if int(t) == EOS:
                        ends.setdefault(k, steps)
            print(f"{label}: OK, {steps} steps, EOS per row at {ends}")
        except Exception as e:  # noqa: BLE001
            print(f"{label}: FAILS at step {steps + 1} (rows ended at steps {ends}): {str(e).splitlines()[0][:120]}")

    print("\n== F. logits for logprobs ==")
    g = og.Generator(model, params(len(ids) + 8, ("json_schema", schema_json(False))))
    g.append_tokens(np.asarray(ids, dtype=np.int32))
    for step in range(4):
        logits = g.get_logits()[:, -1, :].astype(np.float64)  # (batch, vocab): the NEXT position, computed on demand
        g.generate_next_token()
        chosen = int(g.get_next_tokens()[0])
        lp = logits[0] - np.logaddexp.reduce(logits[0])
        top = np.argsort(-lp)[:3]
        print(f"step {step}: chosen={chosen!r:6} {tok.decode(np.asarray([chosen], dtype=np.int32))!r:10} raw logprob={lp[chosen]:7.3f}"
              f"  raw top3={[(int(i), round(float(lp[i]), 2)) for i in top]}  masked entries in get_logits: "
              f"{int((logits[0] <= np.finfo(np.float32).min).sum())}")
    print("get_output('logits').shape:", g.get_output("logits").shape)

    print("\n== G. workaround for batches: llguidance in Python + get_logits/set_logits, og only samples ==")
    lt = llguidance.hf.from_tokenizer(AutoTokenizer.from_pretrained(P["hf"]))  # once per model
    template = llg.LLMatcher(lt, llg.LLMatcher.grammar_from_json_schema(common.SCHEMA, defaults={"whitespace_flexible": False}))
    prompts = [ids, ids2, enc([{"role": "user", "content": "Make up a person. JSON."}])]
    width = max(map(len, prompts))
    arr = np.full((3, width), EOS, dtype=np.int32)
    for k, p in enumerate(prompts):
        arr[k, : len(p)] = p
    for sampled in (False, True):
        p = og.GeneratorParams(model)
        opts = dict(max_length=width + 150, batch_size=3)
        opts.update(dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=0, random_seed=7) if sampled else dict(do_sample=False))
        p.set_search_options(**opts)
        g = og.Generator(model, p)
        g.append_tokens(arr)
        matchers = [template.deep_copy() for _ in prompts]
        mask = lnp.allocate_token_bitmask(3, lt.vocab_size)
        eos_only = np.zeros(mask.shape[1], dtype=np.int32)
        eos_only[EOS >> 5] = 1 << (EOS & 31)
        out, done, steps = [[], [], []], [False] * 3, 0
        while not g.is_done():
            logits = g.get_logits()[:, -1, :]  # (3, V): runs the model for the pending tokens
            for k, m in enumerate(matchers):
                if done[k]:
                    mask[k] = eos_only  # finished rows: keep them on EOS (og keeps the batch going)
                else:
                    lnp.fill_next_token_bitmask(m, mask, k)
            allowed = np.unpackbits(mask.view(np.uint8), axis=-1, bitorder="little")[:, : logits.shape[-1]].astype(bool)
            logits[~allowed] = -np.inf
            g.set_logits(logits)
            g.generate_next_token()  # og's own greedy / temperature / top-p sampling on the masked logits
            steps += 1
            for k, t in enumerate(int(x) for x in g.get_next_tokens()):
                if done[k]:
                    continue
                if t == EOS:
                    done[k] = True
                    continue
                out[k].append(t)
                assert matchers[k].consume_token(t), matchers[k].get_error()
        print(f"  {'sampled' if sampled else 'greedy '} batch of 3, {steps} steps: "
              f"{[common.validate(lt.decode_str(o), common.SCHEMA) for o in out]} lengths={[len(o) for o in out]}")


if __name__ == "__main__":
    main()

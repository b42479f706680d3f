"""Q4: guided vs unguided tokens/s, greedy, SmolLM2 (og int4 and transformers fp32), same prompt.

Run with either venv; args: [og|hf|all] [repeats]. Modes are interleaved (A,B,C,A,B,C,...).
Decode tok/s = (generated tokens - 1) / time after the first token (prefill excluded);
e2e tok/s = generated tokens / (generator creation + prefill + decode);
cpu tok/s = decode tokens per second of this process's CPU time (all threads), steadier than wall
time on a shared, overloaded machine.
"""
from __future__ import annotations

import json
import sys
import time

import common
import llguidance as llg
import llguidance.hf
import llguidance.numpy as lnp
import numpy as np
from transformers import AutoTokenizer

P = common.paths()
MAX_NEW = 64
SCHEMA = dict(common.SCHEMA_UNBOUNDED, **{"x-guidance": {"whitespace_flexible": False}})
GRAMMAR = llg.LLMatcher.grammar_from_json_schema(SCHEMA)
EOS = 2


def apply_mask(logits: np.ndarray, mask: np.ndarray) -> None:
    allowed = np.unpackbits(mask.view(np.uint8), axis=-1, bitorder="little")[..., : logits.shape[-1]].astype(bool)
    logits[~allowed] = -np.inf


def report(title: str, results: dict[str, list[tuple[int, float, float, float]]], base: str) -> None:
    print(f"\n{title}  (load {common.loadavg()})")
    def meds(rs):
        return (common.med([(n - 1) / d for n, d, _, _ in rs]), common.med([n / e for n, _, e, _ in rs]),
                common.med([(n - 1) / c for n, _, _, c in rs]))
    b = meds(results[base])
    for mode, rs in results.items():
        dec, e2e, cpu = meds(rs)
        toks = sorted({r[0] for r in rs})
        print(f"  {mode:38s} tokens={toks} decode={dec:6.1f} tok/s (x{dec / b[0]:.2f})  e2e={e2e:6.1f} (x{e2e / b[1]:.2f})"
              f"  cpu={cpu:6.1f} (x{cpu / b[2]:.2f})")


def bench_og(repeats: int) -> None:
    import onnxruntime_genai as og

    model = og.Model(P["ort"])
    tok = og.Tokenizer(model)
    ids = np.asarray(tok.encode(tok.apply_chat_template(json.dumps(common.MESSAGES), add_generation_prompt=True)), dtype=np.int32)
    lt = llguidance.hf.from_tokenizer(AutoTokenizer.from_pretrained(P["hf"]))
    template = llg.LLMatcher(lt, GRAMMAR)  # compiled once; each request deep_copy()s it
    mask = lnp.allocate_token_bitmask(1, lt.vocab_size)

    def params(native: bool):
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=len(ids) + MAX_NEW, do_sample=False)
        if native:
            p.set_guidance("json_schema", json.dumps(SCHEMA))
        return p

    def native(guided: bool):
        t0 = time.perf_counter()
        g = og.Generator(model, params(guided))
        g.append_tokens(ids)
        n, t1 = 0, None
        while not g.is_done():
            g.generate_next_token()
            n += 1
            if t1 is None:
                t1, c1 = time.perf_counter(), time.process_time()
        t2 = time.perf_counter()
        return n, t2 - t1, t2 - t0, time.process_time() - c1

    def python_side(guided: bool):
        t0 = time.perf_counter()
        g = og.Generator(model, params(False))
        g.append_tokens(ids)
        m = template.deep_copy() if guided else None
        n, t1 = 0, None
        while not g.is_done():
            logits = g.get_logits()  # runs the model for the pending token; (1, 1, V)
            if m is not None:
                lnp.fill_next_token_bitmask(m, mask, 0)
                apply_mask(logits[:, -1, :], mask)
            g.set_logits(logits[:, -1, :])
            g.generate_next_token()  # samples (greedy) from the logits just set
            token = int(g.get_next_tokens()[0])
            n += 1
            if t1 is None:
                t1, c1 = time.perf_counter(), time.process_time()
            if m is not None and token != EOS:
                assert m.consume_token(token), m.get_error()
        t2 = time.perf_counter()
        return n, t2 - t1, t2 - t0, time.process_time() - c1

    modes = {
        "og unguided (generate_next_token)": lambda: native(False),
        "og guided: set_guidance json_schema": lambda: native(True),
        "og unguided via get/set_logits": lambda: python_side(False),
        "og guided: llguidance py + set_logits": lambda: python_side(True),
    }
    for f in modes.values():  # warm-up
        f()
    results: dict[str, list] = {k: [] for k in modes}
    for _ in range(repeats):
        for k, f in modes.items():
            results[k].append(f())
    report(f"onnxruntime-genai {og.__version__} int4, greedy, max {MAX_NEW} new tokens, {repeats} interleaved repeats",
           results, "og unguided (generate_next_token)")


def bench_hf(repeats: int) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(P["hf"])
    model = AutoModelForCausalLM.from_pretrained(P["hf"], dtype=torch.float32).eval()
    enc = tok.apply_chat_template(common.MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    lt = llguidance.hf.from_tokenizer(tok)
    template = llg.LLMatcher(lt, GRAMMAR)
    mask = lnp.allocate_token_bitmask(1, lt.vocab_size)

    def loop(guided: bool, fast: bool = False):
        t0 = time.perf_counter()
        m = template.deep_copy() if guided else None
        x = torch.tensor([ids])
        past, n, t1 = None, 0, None
        with torch.inference_mode():
            while n < MAX_NEW:
                out = model(input_ids=x, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float().numpy()
                if m is not None:
                    cand = int(logits[0].argmax()) if fast else -1
                    if not (fast and m.validate_tokens([cand]) == 1):
                        lnp.fill_next_token_bitmask(m, mask, 0)
                        apply_mask(logits, mask)
                        cand = int(logits[0].argmax())
                    token = cand
                else:
                    token = int(logits[0].argmax())
                n += 1
                if t1 is None:
                    t1, c1 = time.perf_counter(), time.process_time()
                if token == EOS:
                    break
                if m is not None:
                    assert m.consume_token(token), m.get_error()
                x = torch.tensor([[token]])
        t2 = time.perf_counter()
        return n, t2 - t1, t2 - t0, time.process_time() - c1

    modes = {
        "hf unguided": lambda: loop(False),
        "hf guided (mask every step)": lambda: loop(True),
        "hf guided (argmax-first fast path)": lambda: loop(True, fast=True),
    }
    for f in modes.values():
        f()
    results: dict[str, list] = {k: [] for k in modes}
    for _ in range(repeats):
        for k, f in modes.items():
            results[k].append(f())
    report(f"transformers {transformers.__version__} fp32, 1 torch thread, greedy, max {MAX_NEW} new tokens, "
           f"{repeats} interleaved repeats", results, "hf unguided")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    if which in ("og", "all"):
        bench_og(reps)
    if which in ("hf", "all"):
        bench_hf(max(3, reps // 2))

"""Q2: transformers + llguidance (LLMatcher, llguidance.numpy masks) in a manual greedy KV-cache loop.

Run with either venv:  ../../../.venv/bin/python q2_hf.py  |  ../../../.venv-current/bin/python q2_hf.py
Uses one torch thread (as flavorkit's calibration does) to reduce noise on the shared 2-core box.
"""
from __future__ import annotations

import json
import time

import common
import llguidance as llg
import llguidance.hf
import llguidance.numpy as lnp
import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
P = common.paths()


def apply_unpackbits(logits: np.ndarray, mask: np.ndarray) -> None:
    """Same effect as lnp.apply_token_bitmask_inplace, via np.unpackbits (little bit order)."""
    v = logits.shape[-1]
    allowed = np.unpackbits(mask.view(np.uint8), axis=-1, bitorder="little")[..., :v].astype(bool)
    logits[~allowed] = -np.inf


def allowed_bit(mask_row: np.ndarray, token: int) -> bool:
    return bool((int(mask_row[token >> 5]) >> (token & 31)) & 1)


def main() -> None:
    tok = AutoTokenizer.from_pretrained(P["hf"])
    model = AutoModelForCausalLM.from_pretrained(P["hf"], torch_dtype=torch.float32).eval()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, llguidance {llg.__version__}; load {common.loadavg()}")
    times = []
    for _ in range(3):
        t = time.perf_counter()
        lt = llguidance.hf.from_tokenizer(tok)  # do once per model and keep
        times.append(time.perf_counter() - t)
    print(f"llguidance.hf.from_tokenizer: {[round(x * 1e3) for x in times]} ms  vocab={lt.vocab_size} eos={lt.eos_tokens}"
          f"  model vocab={model.config.vocab_size}")

    ids = tok.apply_chat_template(common.MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    grammar = llg.LLMatcher.grammar_from_json_schema(common.SCHEMA, defaults={"whitespace_flexible": False})
    V = model.config.vocab_size
    eos = set(lt.eos_tokens)

    def decode(guided: bool, max_new: int = 200, fast: bool = False):
        """Greedy loop; returns text and per-step timings (ms)."""
        m = llg.LLMatcher(lt, grammar) if guided else None
        mask = lnp.allocate_token_bitmask(1, V)
        input_ids = torch.tensor([ids])
        past = None
        out, t_fwd, t_mask, t_apply, t_consume, hits = [], [], [], [], [], 0
        with torch.inference_mode():
            for _ in range(max_new):
                t0 = time.perf_counter()
                res = model(input_ids=input_ids, past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[:, -1, :].float().numpy()  # (1, V) view, CPU
                t1 = time.perf_counter()
                t_fwd.append(t1 - t0)
                if m is not None:
                    if fast:
                        # greedy shortcut: if the raw argmax is allowed, skip the mask altogether
                        cand = int(logits[0].argmax())
                        if m.validate_tokens([cand]) == 1:
                            hits += 1
                            token = cand
                            t2 = t3 = time.perf_counter()
                        else:
                            lnp.fill_next_token_bitmask(m, mask, 0)
                            t2 = time.perf_counter()
                            apply_unpackbits(logits, mask)
                            token = int(logits[0].argmax())
                            t3 = time.perf_counter()
                    else:
                        lnp.fill_next_token_bitmask(m, mask, 0)
                        t2 = time.perf_counter()
                        lnp.apply_token_bitmask_inplace(logits, mask)
                        token = int(logits[0].argmax())
                        t3 = time.perf_counter()
                    t_mask.append(t2 - t1)
                    t_apply.append(t3 - t2)
                    if token in eos:
                        break
                    ok = m.consume_token(token)
                    t_consume.append(time.perf_counter() - t3)
                    assert ok, m.get_error()
                else:
                    token = int(logits[0].argmax())
                    if token in eos:
                        break
                out.append(token)
                input_ids = torch.tensor([[token]])
        stop = m.stop_reason() if m is not None else "-"
        return tok.decode(out), len(out), t_fwd, t_mask, t_apply, t_consume, hits, stop

    print("\n== guided greedy decode, JSON schema (whitespace_flexible=false) ==")
    text, n, *_rest, stop = decode(True)
    print(f"{n} tokens, matcher stop_reason={stop}: {common.validate(text, common.SCHEMA)}\n   {text}")
    text_fast, n_fast, *_r, hits, _ = decode(True, fast=True)
    print(f"fast path (validate_tokens on raw argmax first): identical output={text_fast == text}, "
          f"argmax already allowed on {hits}/{n_fast} steps")
    text_u, n_u, *_ = decode(False, max_new=60)
    print(f"unguided (60 tokens): {text_u[:120]!r}")

    print("\n== per-step cost (ms, medians over the guided decode; interleaved 3 rounds) ==")
    rows = {"forward": [], "fill mask": [], "apply (lnp)": [], "consume": [], "fwd(fast)": [], "mask+apply (fast)": []}
    for _ in range(3):
        _, _, f, mk, ap, co, _, _ = decode(True)
        rows["forward"] += f
        rows["fill mask"] += mk
        rows["apply (lnp)"] += ap
        rows["consume"] += co
        _, _, f2, mk2, ap2, _, _, _ = decode(True, fast=True)
        rows["fwd(fast)"] += f2
        rows["mask+apply (fast)"] += [a + b for a, b in zip(mk2, ap2)]
    for k, v in rows.items():
        print(f"  {k:18s} median={common.med(v) * 1e3:7.3f}  p90={np.percentile(v, 90) * 1e3:7.3f}  n={len(v)}")

    # apply variants in isolation
    logits = np.random.default_rng(0).standard_normal((1, V)).astype(np.float32)
    mask = lnp.allocate_token_bitmask(1, V)
    m = llg.LLMatcher(lt, grammar)
    lnp.fill_next_token_bitmask(m, mask, 0)
    res = {}
    for name, fn in (("lnp.apply_token_bitmask_inplace", lnp.apply_token_bitmask_inplace), ("np.unpackbits", apply_unpackbits)):
        ts = []
        for _ in range(50):
            x = logits.copy()
            t = time.perf_counter()
            fn(x, mask)
            ts.append(time.perf_counter() - t)
        res[name] = (common.med(ts) * 1e3, x)
        print(f"  isolated {name:32s} {res[name][0]:.3f} ms")
    a, b = (r[1] for r in res.values())
    print("  both variants agree:", bool(np.array_equal(np.isinf(a), np.isinf(b))))

    print("\n== batch of 3 rows, one LLMatcher each, LLExecutor fill_next_token_bitmask_par ==")
    ex = llg.LLExecutor()
    ms = [llg.LLMatcher(lt, grammar) for _ in range(3)]
    for mm, prefix in zip(ms, ['{"name":"A', '{"name":"Bob","age":7,', '{']):
        assert mm.consume_tokens(lt.tokenize_str(prefix))
    bm = lnp.allocate_token_bitmask(3, V)
    ts_par, ts_seq = [], []
    for _ in range(20):
        t = time.perf_counter()
        lnp.fill_next_token_bitmask_par(ex, [(mm, i) for i, mm in enumerate(ms)], bm)
        ts_par.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i, mm in enumerate(ms):
            lnp.fill_next_token_bitmask(mm, bm, i)
        ts_seq.append(time.perf_counter() - t)
    print(f"  3 masks: par={common.med(ts_par) * 1e3:.3f} ms  sequential={common.med(ts_seq) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()

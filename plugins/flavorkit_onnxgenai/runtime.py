"""The onnxruntime-genai runtime behind the onnx backends (imported only when a model loads).

Decoding uses ``og.Generator`` with ``append_tokens``/``generate_next_token``. Requests that share
their sampling settings run together in right-padded batches (``batch_size`` > 1), which on these
models is faster than ``og.Engine`` and, unlike the 0.15 Engine, can stop early and survives bad
requests; greedy rows give exactly their single-request output. Which requests share a batch is
decided by a cost model (:class:`flavorkit.runtime.cost.CostModel`, calibrated for the CPU provider):
a padded batch computes every row at the widest prompt and until the longest request ends, so
prompts of very different lengths or ``max_tokens`` are decoded apart. Limits that
onnxruntime-genai applies per batch (``max_length``, EOS) are enforced per row here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flavorkit.sdk import (
    BackendError,
    BackendUnavailable,
    CostModel,
    Delta,
    GenerationRequest,
    InterleavedSession,
    Message,
    ModelSourceError,
    NativeStream,
    TokenRow,
    accept_tokens,
    guidance_tokenizer_from_file,
    process_logits,
    usable_cores,
)

__all__ = ["CPU_COST", "GPU_COST", "MAX_BATCH", "OgHandle", "set_cpu_threads"]

#: Stands in for a finished row when logits processors run over a batch: it has none.
_IDLE = GenerationRequest(prompt_ids=(), max_tokens=1)

#: Upper bound on rows per og.Generator batch; the KV cache grows with rows x max_length.
MAX_BATCH = 16

#: Milliseconds of an og.Generator batch on the CPU provider, measured with ``python -m
#: benchmarks.calibrate onnx-cpu`` (SmolLM2-135M int4, 2 cores, the backend's two intra-op threads,
#: nothing else running; 2026-12-07). Finished rows stay in the batch. The earlier figures, taken
#: at a load average of 8 to 10 (3.91, 0.00146, 13.6, 3.79, 0.017), were about 2.7x slower
#: throughout, with a larger shared part of a step; in tests/runtime/test_length_batching.py they
#: chose the same plans but one (prompts of 100 and 150 tokens with 150 and 100 to generate: now apart).
CPU_COST = CostModel(prompt_token=1.43, prompt_attention=0.000438, step=4.21, row_step=1.62, context=0.00594)

#: GPU providers (not measured): only steps count, so requests that fit share one batch.
GPU_COST = CostModel(prompt_token=0.0, prompt_attention=0.0, step=1.0, row_step=0.0, context=0.0, margin=0.0)


def set_cpu_threads(config: Any, threads: int | None = None) -> None:
    """Give an ``og.Config``'s decoder ``threads`` ONNX Runtime threads per step (default: every usable core).

    Usable cores are the process's affinity capped by a container's CPU quota (``usable_cores``).

    The onnx backends do this on the CPU provider; a raw onnxruntime-genai reference that should
    decode exactly as they do (tests, benchmarks) does it too.
    """
    count = threads or usable_cores()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": count}}}}))


def _og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:  # the registry normally reports this earlier, with the pip hint
        raise BackendUnavailable("onnx", f"onnxruntime_genai cannot be imported: {exc}") from exc
    return og


#: ONNX Runtime's words for a graph it refuses ...
_INVALID_GRAPH = "This is an invalid model"
#: ... and, within those, the ones that mean a runtime older than the model (an unknown operator or
#: opset, a newer IR version): the runtime is at fault, not the folder.
_RUNTIME_TOO_OLD = ("No Op registered", "IR version", "opset")


def _graph_defect(message: str) -> bool:
    """Whether ONNX Runtime's load error ``message`` says the graph is malformed in itself."""
    return _INVALID_GRAPH in message and not any(marker in message for marker in _RUNTIME_TOO_OLD)


log = logging.getLogger(__name__)

#: The invariance probe: decoding steps compared, batch sizes tried, and its text (plain prose).
_PROBE_STEPS = 4
_PROBE_BATCHES = (2, 8)
#: Issue 21 saw int4 batches drift from single rows on prompts of 60 tokens and more (31 to 39 tokens
#: mostly matched), so the long probe row, its first ``_PROBE_WORDS`` words, is past that length on
#: any real tokenizer (106 tokens on SmolLM2's).
_PROBE_TEXT = (
    "The river ran past the old mill where the baker kept his flour in wooden barrels, and every "
    "morning the children of the village walked along the bank to buy warm bread before school, "
    "counting the boats that carried timber down to the harbour where ships waited for the tide. "
    "In winter the water rose over the lower meadow, and the miller's daughter rowed a small green "
    "boat between the willows to carry letters to the farms that the flood had cut off from the "
    "road. The postman paid her in apples and stories about the city, where the streets were lit "
    "all night and nobody knew the names of their neighbours, which she found hard to believe."
)
#: The long probe row's length in words, at most: its tokens are also capped by the context.
_PROBE_WORDS = 96


@dataclass
class OgHandle:
    """A loaded ORT-genai model, its tokenizer and the facts the core asks for."""

    model: Any
    tokenizer: Any
    context_length: int
    eos_ids: frozenset[int]
    pad_id: int
    name: str
    vocab_size: int = 0
    batching: str = "auto"
    cost: CostModel = CPU_COST
    folder: str = ""
    #: Whether batched greedy decoding computes bitwise the one-row logits here (None: not probed yet).
    invariant: bool | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        folder: str,
        *,
        provider: str = "cpu",
        provider_options: Mapping[str, str] | None = None,
        batching: str = "auto",
        intra_op_num_threads: int | None = None,
    ) -> OgHandle:
        """Open ``folder`` (holding genai_config.json) on the given execution provider.

        On the CPU provider, ONNX Runtime gets ``intra_op_num_threads`` threads per step (default: every
        core this process may use). onnxruntime-genai otherwise runs one: on 2 cores, two threads
        decode SmolLM2 int4 1.54x faster alone and 1.61x in a batch of 8 (docs/benchmarks.md).
        """
        og = _og()
        path = Path(folder)
        config_file = path / "genai_config.json"
        if not config_file.is_file():
            raise ModelSourceError(path, "genai_config.json not found: not an ORT-genai model folder")
        config = og.Config(str(path))
        if provider == "cpu":
            set_cpu_threads(config, intra_op_num_threads)
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
            for key, value in (provider_options or {}).items():
                config.set_provider_option(provider, key, str(value))
        try:
            model = og.Model(config)
        except Exception as exc:
            if _graph_defect(str(exc)):
                # ONNX Runtime rejected the graph itself: the folder is at fault, not the runtime. (An IR
                # version, opset or operator it does not know means an older runtime: unavailable, below.)
                raise ModelSourceError(path, f"ONNX Runtime cannot load its model file: {exc}") from exc
            raise BackendUnavailable(
                f"onnx-{provider}", f"onnxruntime-genai could not create the model: {exc}"
            ) from exc
        tokenizer = og.Tokenizer(model)
        genai = json.loads(config_file.read_text(encoding="utf-8"))["model"]
        eos = genai.get("eos_token_id", [])
        eos_ids = frozenset(eos if isinstance(eos, list) else [eos]) | frozenset(
            int(t) for t in tokenizer.eos_token_ids
        )
        pad = genai.get("pad_token_id", next(iter(sorted(eos_ids)), 0))
        return cls(
            model=model,
            tokenizer=tokenizer,
            context_length=int(genai["context_length"]),
            eos_ids=eos_ids,
            pad_id=int(pad[0] if isinstance(pad, list) else pad),
            name=os.path.basename(os.path.normpath(folder)),
            vocab_size=int(genai.get("vocab_size", 0)),
            batching=batching,
            cost=CPU_COST if provider == "cpu" else GPU_COST,
            folder=str(path),
        )

    def close(self) -> None:
        """Drop references to the og objects so their memory is released."""
        self.model = None
        self.tokenizer = None

    # -- prompt -----------------------------------------------------------------------------------

    def encode(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Render the chat template (``tools`` too) and tokenize; a model without one is a :class:`BackendError`."""
        payload = json.dumps([dict(m) for m in messages], ensure_ascii=False)
        extra = {"tools": json.dumps(list(tools), ensure_ascii=False)} if tools else {}
        try:
            prompt = self.tokenizer.apply_chat_template(payload, add_generation_prompt=True, **extra)
        except RuntimeError as exc:
            if "Empty chat template" not in str(exc):
                raise
            raise BackendError(
                f"model {self.name!r} has no chat template, so chat messages cannot be turned into a prompt; "
                "package a model whose folder has one (chat_template.jinja or tokenizer_config.json)"
            ) from None
        return [int(t) for t in self.tokenizer.encode(prompt)]

    def encode_text(self, text: str) -> list[int]:
        """Tokenize a text-generation prompt as plain text, no chat template (the ``encode_text`` hook, spec 4)."""
        return [int(t) for t in self.tokenizer.encode(text)]

    def guidance_tokenizer(self) -> Any:
        """The vocabulary for guided decoding, read from the folder's ``tokenizer.json``.

        Its end of sequence is the one the batch stops rows on (genai_config's first), and its size
        the width of the logits, so a mask covers every column.
        """
        tokenizer_file = Path(self.folder) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise BackendError(f"model {self.name!r} has no tokenizer.json, which guided decoding reads")
        return guidance_tokenizer_from_file(str(tokenizer_file), min(self.eos_ids), n_vocab=self.vocab_size or None)

    # -- decoding ---------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        """Decode every request, batching those whose sampling settings match and whose sizes suit."""
        for group in self.groups(requests):
            yield from self._decode(group, [requests[i] for i in group])

    def session(self) -> InterleavedSession:
        """Continuous batching: each group of :meth:`groups` admitted together is its own ``og.Generator``.

        Generators over one ``og.Model`` are independent, so the session advances them in turn, one
        token each per step; a request admitted between steps starts at the next one.
        """
        return InterleavedSession(self.generate, split=self.groups)

    def groups(self, requests: Sequence[GenerationRequest]) -> list[list[int]]:
        """Request indices decoded together: same search settings, then the cost model's plan.

        Each group fits the context (widest prompt + largest ``max_tokens``) and :data:`MAX_BATCH`;
        groups are ordered by their first index. With ``batching="exact"`` (the default) every
        greedy request is a group of its own: onnxruntime's int4 kernels round differently for
        several rows, so a greedy row in a batch can flip a near-tie (issue 21 measured 13 of 32
        served answers changed), while a one-row generator computes exactly what the request
        alone computes.
        """
        if self.batching == "sequential":
            return [[i] for i in range(len(requests))]
        buckets: dict[tuple[Any, ...], list[int]] = {}
        alone: list[list[int]] = []
        exact = self.batching == "exact" and sum(r.greedy for r in requests) > 1 and not self.batches_exactly()
        for i, req in enumerate(requests):
            if req.greedy and exact:
                alone.append([i])  # batch size 1: the single-request numerics, whatever else runs
                continue
            key = (
                ("greedy",)
                if req.greedy
                else (req.temperature, req.top_p, req.top_k, req.seed, i if req.seed is not None else None)
            )
            buckets.setdefault(key, []).append(i)
        groups: list[list[int]] = []
        for members in buckets.values():
            plan = self.cost.plan(
                [len(requests[i].prompt_ids) for i in members],
                [requests[i].max_tokens for i in members],
                MAX_BATCH,
                fits=lambda width, steps: width + steps <= self.context_length,
            )
            groups.extend([members[k] for k in group] for group in plan)
        groups.extend(alone)
        groups.sort(key=min)
        return groups

    def batches_exactly(self) -> bool:
        """Whether a batch computes bitwise the logits each of its rows computes alone, probed once.

        onnxruntime's kernels may take other paths for several rows than for one: on an AMD EPYC
        without AVX-512, SmolLM2's int4 MatMulNBits did, and 13 of 32 served greedy answers changed
        under load (issue 21); on an Intel CPU with AVX-512 the same batches were bitwise equal. So
        ``batching="exact"`` asks this machine: the probe decodes a long prompt (106 tokens of prose
        on SmolLM2's tokenizer) and a short one alone, then right-padded together in batches of 2
        and 8, and compares every step's logits bit for bit. Equal everywhere: greedy rows share
        batches. Any difference: each greedy row gets a generator of its own.
        """
        if self.invariant is None:
            started = time.perf_counter()
            try:
                self.invariant = self._probe_invariance()
            except Exception:  # a batch of 8 may fail where one row works (memory, provider limits)
                log.warning("the batch invariance probe failed; greedy requests decode alone", exc_info=True)
                self.invariant = False
            log.info(
                "onnxruntime-genai batches %s on this machine (probed in %.2f s): greedy requests %s",
                "bitwise like single rows" if self.invariant else "with other rounding than single rows",
                time.perf_counter() - started,
                "share batches" if self.invariant else "decode alone, interleaved",
            )
        return self.invariant

    def _probe_invariance(self, steps: int = _PROBE_STEPS) -> bool:
        """Decode the probe prompts alone and batched; True when every step's logits are bitwise equal."""
        import numpy as np

        text = " ".join(_PROBE_TEXT.split()[: max(8, min(_PROBE_WORDS, self.context_length // 8))])
        long_ids = [int(t) for t in self.tokenizer.encode(text)][: max(2, self.context_length // 4)]
        short_ids = long_ids[: max(1, len(long_ids) // 3)]
        if len(long_ids) + steps > self.context_length:
            return False  # no room to probe: decode alone, which is always exact
        alone = {len(ids): self._probe_logits([ids], steps)[0] for ids in (long_ids, short_ids)}
        for size in _PROBE_BATCHES:
            rows = [long_ids if k % 2 == 0 else short_ids for k in range(size)]
            batched = self._probe_logits(rows, steps)
            for ids, logits in zip(rows, batched, strict=True):
                if not np.array_equal(logits, alone[len(ids)]):
                    return False
        return True

    def _probe_logits(self, rows: Sequence[Sequence[int]], steps: int) -> list[Any]:
        """Each row's logits over ``steps`` greedy steps, decoded as one right-padded batch."""
        og = _og()
        import numpy as np

        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int32)
        for k, row in enumerate(rows):
            ids[k, : len(row)] = row
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=width + steps, do_sample=False, batch_size=len(rows))
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        seen: list[list[Any]] = [[] for _ in rows]
        for _ in range(steps):
            logits = np.array(generator.get_logits()[:, -1, :], copy=True)
            for k in range(len(rows)):
                seen[k].append(logits[k])
            generator.generate_next_token()
        return [np.stack(s) for s in seen]

    def _params(self, req: GenerationRequest, max_length: int, batch_size: int = 1) -> Any:
        og = _og()
        params = og.GeneratorParams(self.model)
        options: dict[str, Any] = {"max_length": max_length, "batch_size": batch_size}
        if req.greedy:
            options["do_sample"] = False
        else:
            options.update(
                do_sample=True,
                temperature=float(req.temperature),
                top_p=float(req.top_p),
                # 0 disables top-k (genai_config's default would be 50); a top_k at or above the
                # vocabulary keeps every token, and onnxruntime-genai rejects one above it.
                top_k=int(req.top_k) if req.top_k and (not self.vocab_size or req.top_k < self.vocab_size) else 0,
                random_seed=int(req.seed) if req.seed is not None else -1,
            )
        params.set_search_options(**options)
        return params

    def _text(self) -> NativeStream:
        """The row's text: onnxruntime-genai's own stream, with its held-back tail decoded at the end."""
        import numpy as np

        tokenizer = self.tokenizer

        def decode(ids: Sequence[int]) -> str:
            return str(tokenizer.decode(np.asarray(ids, dtype=np.int32)))

        return NativeStream(tokenizer.create_stream().decode, decode)

    def _decode(self, indices: Sequence[int], reqs: Sequence[GenerationRequest]) -> Iterator[Delta]:
        """Decode ``reqs`` (the requests at ``indices``) in one right-padded og.Generator batch.

        onnxruntime-genai stops a batch only when every row is done, so end of sequence and
        ``max_tokens`` are applied per row here; finished and cancelled rows are skipped.
        """
        og = _og()
        import numpy as np

        width = max(len(r.prompt_ids) for r in reqs)
        ids = np.full((len(reqs), width), self.pad_id, dtype=np.int32)
        for k, req in enumerate(reqs):
            ids[k, : len(req.prompt_ids)] = req.prompt_ids
        budget = max(r.max_tokens for r in reqs)
        generator = og.Generator(self.model, self._params(reqs[0], width + budget, batch_size=len(reqs)))
        generator.append_tokens(ids)
        rows = [
            TokenRow(index, req.max_tokens, self.eos_ids, self._text())
            for index, req in zip(indices, reqs, strict=True)
        ]
        live = list(range(len(reqs)))
        guided = any(r.logits_processor is not None for r in reqs)
        while True:
            live = [k for k in live if not (rows[k].done or reqs[k].cancelled)]
            if not live:
                return
            if guided:
                # The pending tokens run through the model here; og then picks from the edited logits.
                # Finished rows are left as they are (_IDLE): their tokens are no longer read.
                alive = set(live)
                rows_now = [req if k in alive else _IDLE for k, req in enumerate(reqs)]
                logits = generator.get_logits()[:, -1, :]
                if process_logits(rows_now, logits):
                    generator.set_logits(np.ascontiguousarray(logits))
            generator.generate_next_token()
            tokens = generator.get_next_tokens()
            if guided:
                accept_tokens(rows_now, tokens)
            for k in live:
                yield rows[k].accept(int(tokens[k]))

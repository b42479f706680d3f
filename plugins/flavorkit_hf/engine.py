"""The decoding engine shared by the ``transformers`` and ``optimum-onnx`` backends.

Both runtimes expose the same call: ``model(input_ids, attention_mask, position_ids,
past_key_values, use_cache=True)`` returning ``logits`` and ``past_key_values`` (a transformers
``Cache`` or Optimum's tuple of per-layer ``(key, value)`` tensors). The engine drives that call in
its own token loop instead of ``model.generate``: it sees every token as it is produced (real
streaming), checks ``request.cancelled`` between steps, enforces ``max_tokens`` exactly, never asks
the Hub for anything (``generate(stop_strings=...)`` would fetch a tokenizer), and samples each row
with its own seeded ``torch.Generator`` so a seed reproduces whatever else is in the batch.

Batching: requests are decoded in left-padded batches with explicit attention masks and position
ids, so every row sees exactly its own tokens at its own positions; finished and cancelled rows
leave the batch (their KV-cache rows are dropped). Which requests share a batch is decided by a
cost model (:class:`flavorkit.runtime.cost.CostModel`, calibrated on CPU): every row of a batch is
computed at the widest prompt, so prompts of very different lengths are decoded apart. A padded
batch is mathematically equal to one request at a time but not bit-for-bit (other matmul shapes,
padded keys), which could flip a greedy choice when the two best logits nearly tie. In ``"exact"`` mode a
row whose top-2 logits come within :data:`TIE_TOLERANCE` (relative) of each other leaves the batch
and is finished by the single-request path, which first replays the tokens the row already produced
with the very same calls a single request makes, so from then on it *is* the single-request
computation. Observed batch-vs-single drift on SmolLM2 fp32 is about 1e-4 on logits of magnitude
~20, i.e. 5e-6 relative, twenty times below the tolerance. 16-bit weights drift too much for a
useful bound, so ``"exact"`` decodes them one request at a time.

The batch itself (rows, sampling, row selection, replaying a row alone) is
:mod:`flavorkit_hf.decoding`, which the continuous-batching session (:mod:`flavorkit_hf.session`,
opened by :meth:`Engine.session`) decodes with too; the engine supplies the model call.

This module imports torch: only hooks import it, never the plugin modules the entry points name.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch

from flavorkit.sdk import (
    BackendError,
    CostModel,
    Delta,
    GenerationRequest,
    Message,
    TokenRow,
    WindowDecoder,
    guidance_tokenizer_from_hf,
)
from flavorkit_hf.decoding import Batch, Row, Sampler, replay_alone
from flavorkit_hf.session import EngineSession

__all__ = [
    "CPU_COST",
    "GPU_COST",
    "TIE_TOLERANCE",
    "Batching",
    "Engine",
    "context_length_of",
    "eos_ids_of",
]

Batching = Literal["exact", "padded", "sequential"]

#: Relative margin between the two best logits under which a batched greedy step is redone alone.
TIE_TOLERANCE = 1e-4

#: Milliseconds of a batch of the engine on CPU, measured with ``python -m benchmarks.calibrate
#: transformers`` (SmolLM2-135M fp32, 2 cores, one torch thread: with two, the loaded machine's
#: thread contention swamped the measurement). Finished rows leave the batch.
CPU_COST = CostModel(
    prompt_token=3.9, prompt_attention=0.000774, step=59.2, row_step=8.03, context=0.0168, rows_leave=True
)
#: Accelerators (not measured): only steps count, so requests share batches of max_batch_size.
GPU_COST = CostModel(
    prompt_token=0.0, prompt_attention=0.0, step=1.0, row_step=0.0, context=0.0, rows_leave=True, margin=0.0
)
_EXACT_DTYPES = (torch.float32, torch.float64)


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, Iterable):
        return {int(v) for v in value}
    return set()


def eos_ids_of(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids: the generation config's, the model config's and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        if source is not None:
            ids |= _ids(getattr(source, "eos_token_id", None))
    ids |= _ids(getattr(tokenizer, "eos_token_id", None))
    return frozenset(ids)


def context_length_of(config: Any, tokenizer: Any, default: int = 2048) -> int:
    """The number of positions the model attends to, from its config (or the tokenizer as a fallback)."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    text_config = getattr(config, "text_config", None)
    if text_config is not None and text_config is not config:
        return context_length_of(text_config, tokenizer, default)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    return default


def cache_argument(model: Any) -> str:
    """The keyword ``model.forward`` takes its KV cache by, and the output field it returns it in.

    transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns on every call and
    goes away in 5.40); transformers 4 and Optimum's ORT models take ``past_key_values``.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out: Any, argument: str) -> Any:
    """The new KV cache in a forward's output, read by the name the model uses (``argument``)."""
    return getattr(out, argument)


class Engine:
    """A causal LM with its tokenizer: chat-template encoding and streamed, batched decoding."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        context_length: int,
        batching: Batching = "exact",
        max_batch_size: int = 8,
        position_ids: bool = True,
        logits_to_keep: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = int(context_length)
        self.eos_ids = eos_ids_of(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else min(self.eos_ids, default=0)
        self.batching: Batching = batching
        self.max_batch_size = max(1, int(max_batch_size))
        self.position_ids = position_ids
        self.logits_to_keep = logits_to_keep
        self.cache_argument = cache_argument(model)
        self.device = torch.device(device)
        self.cost = CPU_COST if self.device.type == "cpu" else GPU_COST
        #: None when batched greedy decoding cannot be bounded (16-bit weights): "exact" then decodes alone.
        self.tie_tolerance: float | None = TIE_TOLERANCE if dtype in _EXACT_DTYPES else None
        #: Counters for observability and tests: forward calls, rows computed over all calls, batches,
        #: rows replayed alone (and replayed tokens that differed, which would be a bug).
        self.stats: Counter[str] = Counter()

    @staticmethod
    def accepts(model: Any, argument: str) -> bool:
        """True when ``model.forward`` names ``argument`` explicitly (``**kwargs`` does not count)."""
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return False
        return argument in params

    def close(self) -> None:
        """Drop the model and tokenizer so their memory can be freed."""
        self.model = None
        self.tokenizer = None

    # -- prompt -----------------------------------------------------------------------------------

    def guidance_tokenizer(self) -> Any:
        """The vocabulary for guided decoding, from the tokenizer, as wide as the model's logits."""
        width = getattr(getattr(self.model, "config", None), "vocab_size", None)
        return guidance_tokenizer_from_hf(self.tokenizer, n_vocab=int(width) if width else None)

    def encode_text(self, text: str) -> list[int]:
        """Tokenize a text-generation prompt as plain text, no chat template (the ``encode_text`` hook, spec 4).

        ``tokenizer(text)`` as transformers' own text-generation pipeline does: the tokenizer's
        default special tokens (a beginning-of-sequence token where it adds one), markers written
        in the text read as the special tokens they name.
        """
        return [int(t) for t in self.tokenizer(text)["input_ids"]]

    def encode(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Apply the chat template (``tools`` too), generation prompt included; none is a :class:`BackendError`."""
        conversation = [dict(m) for m in messages]
        extra = {"tools": list(tools)} if tools else {}
        if not getattr(self.tokenizer, "chat_template", None):
            raise BackendError(
                f"model {self.name!r} has no chat template, so chat messages cannot be turned into a prompt; "
                "package a model whose tokenizer has one (chat_template.jinja or tokenizer_config.json)"
            )
        ids: Any = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, **extra)
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    # -- decoding ---------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        """Decode every request, batching where the mode allows; yields one delta per token."""
        todo = []
        for i, req in enumerate(requests):
            if req.max_tokens <= 0:
                yield Delta(i, "", 0, "length")
            else:
                todo.append(i)
        for group in self.plan(requests, todo):
            if len(group) > 1:
                self.stats["batches"] += 1
            yield from self._run(Batch([self.row(i, requests[i]) for i in group]))

    def session(self) -> EngineSession:
        """A continuous-batching session over this engine (see :mod:`flavorkit_hf.session`).

        ``"sequential"`` keeps its promise of one request at a time: one live row, the rest wait.
        """
        return EngineSession(self, max_rows=1 if self.batching == "sequential" else None)

    def token_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids one request produces alone (end-of-sequence included), for diagnostics and tests."""
        row = self.row(0, request)
        for _delta in self._run(Batch([row])):
            pass
        return list(row.generated)

    @property
    def batches(self) -> bool:
        """Whether several requests may share a forward pass in the current mode."""
        if self.batching == "sequential" or not self.position_ids:
            return False
        return not (self.batching == "exact" and self.tie_tolerance is None)

    def plan(self, requests: Sequence[GenerationRequest], todo: Sequence[int]) -> list[list[int]]:
        """Groups of request indices decoded together: the cost model's plan, at most max_batch_size each."""
        if len(todo) <= 1 or not self.batches:
            return [[i] for i in todo]
        plan = self.cost.plan(
            [len(requests[i].prompt_ids) for i in todo], [requests[i].max_tokens for i in todo], self.max_batch_size
        )
        return [[todo[k] for k in group] for group in plan]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of generated ids: special tokens skipped, an incomplete character as U+FFFD."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def row(self, index: int, request: GenerationRequest) -> Row:
        """The decoding state of ``request``, whose deltas carry ``index``."""
        decoder = TokenRow(index, request.max_tokens, self.eos_ids, WindowDecoder(self.decode))
        return Row(index, request, decoder, Sampler(request))

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Any
    ) -> tuple[torch.Tensor, Any]:
        """One model call; returns the last position's logits (float32, CPU) and the new cache."""
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            self.cache_argument: past,
            "use_cache": True,
        }
        if self.position_ids:
            kwargs["position_ids"] = positions.to(self.device)
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        with torch.no_grad():
            out = self.model(**kwargs)
        self.stats["forward"] += 1
        self.stats["rows"] += int(ids.shape[0])
        return out.logits[:, -1, :].float().cpu(), _returned_cache(out, self.cache_argument)

    def near_tie(self, row: Row, logits: torch.Tensor) -> bool:
        """In exact mode: whether a greedy row's two best logits are too close to trust a batched step."""
        return self._near_tie(row, logits)

    # -- internals --------------------------------------------------------------------------------

    def _near_tie(self, row: Row, logits: torch.Tensor) -> bool:
        # The rule behind near_tie; tests replace it on an instance to make rows leave at a chosen step.
        if self.batching != "exact" or not row.sampler.greedy or self.tie_tolerance is None:
            return False
        top = torch.topk(logits, 2).values
        best, second = float(top[0]), float(top[1])
        return best - second <= self.tie_tolerance * max(1.0, abs(best))

    def _run(self, batch: Batch, logits: torch.Tensor | None = None) -> Iterator[Delta]:
        """Decode ``batch`` to its end (from the ``logits`` of its last pass, if it made one already).

        Rows leave when done, cancelled or near a tie; a row leaving at a near tie is finished alone
        by :meth:`_finish_alone` before the batch goes on.
        """
        if logits is not None:
            yield from batch.pick(self, logits, self._finish_alone)
        while batch.rows:
            yield from batch.step(self, self._finish_alone)

    def _finish_alone(self, row: Row) -> Iterator[Delta]:
        """Replay a row that left a batch alone, then decode it to its end as the single request it is."""
        batch = Batch([row])
        yield from self._run(batch, replay_alone(self, batch))

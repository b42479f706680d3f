"""Padded batch decoding, shared by the engine's ``generate`` and the continuous-batching session.

A :class:`Batch` is a group of :class:`Row` objects decoded by one forward pass per step: left-padded
prompts with an attention mask (padding masked) and explicit per-row position ids, its KV cache,
and each row's pending token. :meth:`Batch.step` drops cancelled rows, makes one forward pass and
picks each row's next token with the row's :class:`Sampler`; finished rows leave (their cache rows
are dropped with :func:`select_rows`) and, in a batch that is not one request's own computation, a
row the engine finds near a tie leaves too and is handed to the caller (``leave``), which replays it
alone with :func:`replay_alone`. The engine decodes a batch to its end; the session steps many
batches (its cohorts) one step at a time, between which requests join.

The model call itself is the engine's (:class:`DecodingEngine` is what a batch needs of it), so
this module imports neither the engine nor the session. It imports torch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from flavorkit.sdk import Delta, GenerationRequest, TokenRow

__all__ = ["Batch", "DecodingEngine", "Row", "Sampler", "replay_alone", "select_rows"]

log = logging.getLogger(__name__)


class Sampler:
    """Chooses the next token of one row: argmax, or temperature/top-k/top-p sampling with its own RNG."""

    __slots__ = ("generator", "greedy", "temperature", "top_k", "top_p")

    def __init__(self, request: GenerationRequest) -> None:
        self.greedy = request.greedy
        self.temperature = float(request.temperature)
        self.top_p = float(request.top_p)
        self.top_k = int(request.top_k) if request.top_k else 0
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device="cpu")
            if request.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(int(request.seed) % 2**64)

    def pick(self, logits: torch.Tensor) -> int:
        """The next token id from one row of float32 CPU logits."""
        if self.greedy:
            return int(torch.argmax(logits))
        scores = logits / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            # Drop a token when the tokens ranked above it already cover top_p (the best one always stays).
            drop = (torch.cumsum(probs, dim=-1) - probs) > self.top_p
            scores = scores.scatter(0, order[drop], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass(eq=False)
class Row:
    """Decoding state of one request: its sampler, the tokens it produced and its :class:`TokenRow` step."""

    index: int
    request: GenerationRequest
    decoder: TokenRow
    sampler: Sampler
    generated: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """True once the row has ended (end of sequence or ``max_tokens``)."""
        return self.decoder.finish_reason is not None

    def accept(self, token: int) -> Delta:
        """Record ``token`` and return its delta; the row's last one carries the finish reason."""
        self.generated.append(token)
        return self.decoder.accept(token)


class DecodingEngine(Protocol):
    """What a :class:`Batch` needs of the engine: the model call, the near-tie rule and the counters."""

    pad_id: int
    device: torch.device
    stats: Counter[str]

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Any
    ) -> tuple[torch.Tensor, Any]:
        """One model call; returns the last position's logits (float32, CPU) and the new cache."""
        ...

    def near_tie(self, row: Row, logits: torch.Tensor) -> bool:
        """Whether ``row``'s next token, chosen from ``logits`` of a batched pass, must be recomputed alone."""
        ...


#: What becomes of a row that leaves a batch at a near tie: the deltas of its replay, and beyond.
Leave = Callable[[Row], Iterable[Delta]]


def select_rows(past: Any, index: torch.Tensor) -> Any:
    """Keep only the batch rows ``index`` of a KV cache (transformers Cache or tuple of tensors)."""
    if hasattr(past, "batch_select_indices"):
        past.batch_select_indices(index)
        return past
    if isinstance(past, torch.Tensor):
        return past.index_select(0, index)
    return tuple(select_rows(item, index) for item in past)


class Batch:
    """Rows decoded by one forward pass per step: a left-padded batch with its cache, mask and positions.

    Until its first forward pass (``past`` None) it holds the prompts; afterwards ``tokens`` are the
    tokens each row picked last, fed at the next pass. ``solo``: every call so far was exactly what a
    single request makes (one row, never padded, never merged), so no near-tie check is needed.
    """

    __slots__ = ("mask", "past", "positions", "rows", "solo", "tokens")

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.solo = len(rows) == 1
        self.past: Any = None
        self.tokens: list[int] = [0] * len(rows)
        width = max(len(r.request.prompt_ids) for r in rows)
        self.mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            self.mask[k, width - len(row.request.prompt_ids) :] = 1
        self.positions = (self.mask.cumsum(dim=-1) - 1).clamp(min=0)

    @property
    def width(self) -> int:
        """Positions in the cache (padding included) once prefilled; the prompt width before."""
        return int(self.mask.shape[1])

    def feed(self, engine: DecodingEngine) -> torch.Tensor:
        """One forward pass (the prompts first, then each row's pending token); returns next-token logits."""
        if self.past is None:
            ids = torch.full(self.mask.shape, engine.pad_id, dtype=torch.long)
            for k, row in enumerate(self.rows):
                n = len(row.request.prompt_ids)
                ids[k, self.width - n :] = torch.tensor(list(row.request.prompt_ids), dtype=torch.long)
            positions = self.positions
        else:
            ids = torch.tensor(self.tokens, dtype=torch.long).unsqueeze(1)
            self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
            positions = self.positions[:, -1:] + 1
        logits, self.past = engine.forward(ids, self.mask, positions, self.past)
        self.positions = positions[:, -1:]
        return logits

    def keep(self, keep: list[int], device: torch.device) -> None:
        """Keep only the rows at ``keep`` (in order), with their cache rows."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[k] for k in keep]
        self.tokens = [self.tokens[k] for k in keep]
        if not keep:
            self.past = None
            return
        index = torch.tensor(keep, dtype=torch.long)
        self.mask, self.positions = self.mask[index], self.positions[index]
        if self.past is not None:
            self.past = select_rows(self.past, index.to(device))

    def pick(self, engine: DecodingEngine, logits: torch.Tensor, leave: Leave) -> Iterator[Delta]:
        """Each row's next token from ``logits``, yielded as it is chosen; then rows that ended leave.

        Cancelled rows (a consumer may cancel while it handles a delta) get no token. In a batch that
        is not ``solo``, a row near a tie leaves without a token and ``leave(row)`` then decodes it
        (unless it was cancelled meanwhile).
        """
        keep: list[int] = []
        alone: list[Row] = []
        for k, row in enumerate(self.rows):
            if row.request.cancelled:
                continue
            processor = row.request.logits_processor
            if processor is not None:
                # A guided row picks from its processed logits and never leaves for a replay: what
                # the grammar allows does not depend on the batch.
                processor.process(logits[k].numpy())
            elif not self.solo and engine.near_tie(row, logits[k]):
                alone.append(row)
                continue
            token = row.sampler.pick(logits[k])
            if processor is not None:
                processor.accept(token)
            yield row.accept(token)
            if not row.done:
                keep.append(k)
                self.tokens[k] = token
        self.keep(keep, engine.device)
        for row in alone:
            if not row.request.cancelled:
                yield from leave(row)

    def step(self, engine: DecodingEngine, leave: Leave) -> Iterator[Delta]:
        """Drop cancelled rows, then one forward pass and :meth:`pick` (nothing when no row is left)."""
        self.keep([k for k, r in enumerate(self.rows) if not r.request.cancelled], engine.device)
        if self.rows:
            yield from self.pick(engine, self.feed(engine), leave)


def replay_alone(engine: DecodingEngine, batch: Batch) -> torch.Tensor:
    """Feed a fresh one-row ``batch`` its prompt, then the tokens the row already produced; its next logits.

    These are exactly the calls the row's request makes decoded alone, so from here on the row *is*
    the single-request computation. A greedy replayed token that the single-request logits would not
    choose is counted (``replay_mismatch``) and logged: it would be a bug.
    """
    (row,) = batch.rows
    engine.stats["replays"] += 1
    logits = batch.feed(engine)
    for step, token in enumerate(row.generated):
        if row.sampler.greedy and int(torch.argmax(logits[0])) != token:
            engine.stats["replay_mismatch"] += 1
            log.warning("request %d: replayed token %d differs from the single-request choice", row.index, step)
        batch.tokens = [token]
        logits = batch.feed(engine)
    return logits

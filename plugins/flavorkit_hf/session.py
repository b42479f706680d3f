"""Continuous batching over :class:`~flavorkit_hf.engine.Engine`: requests join a running batch between steps.

An :class:`EngineSession` holds *cohorts*: groups of rows decoded by one forward pass per step, each
a left-padded batch with its own KV cache, attention mask (padding masked) and per-row position
ids, exactly as the engine's ``generate`` decodes a batch. A :meth:`~EngineSession.step` advances
every cohort once (one forward each), then admits waiting requests while fewer than
``max_batch_size`` rows are live: they are prefilled in the groups the engine's cost model plans
(one forward per group) and pick their first token in that same step. Finally cohorts are merged
when the cost model says one wider pass is cheaper than two: the narrower cohort's cache is
left-padded along the sequence axis with masked positions up to the wider one's, the caches, masks,
positions and next tokens are concatenated along the batch axis, and from the next step on every
row of both shares one forward pass. Finished and cancelled rows leave their cohort (their cache
rows are dropped), and padding columns no row needs any more are cut off.

Guarantees are the engine's. In ``batching="exact"`` a greedy row of a batched cohort whose top-2
logits nearly tie leaves it; its prompt and the tokens it already produced are replayed alone with
the very calls a single request makes, so it continues as the single-request computation, in a
cohort of its own that never merges again (it shares the session's steps, not their forward
passes). A row prefilled alone and not yet merged *is* the single-request computation and needs no
check. Each row samples with its own seeded generator. ``max_tokens``, end of sequence, special
tokens and text increments are handled by the engine's row state, as in ``generate``.

Cache access (what differs between transformers ``Cache`` objects and Optimum's tuples) is kept in
:func:`_kv_tensors` and :func:`_with_kv_tensors`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from flavorkit.sdk import CostModel, Delta, GenerationRequest
from flavorkit_hf.engine import _Row, _select_rows

if TYPE_CHECKING:
    from flavorkit_hf.engine import Engine

__all__ = ["EngineSession", "merge_saving"]

log = logging.getLogger(__name__)

# -- KV cache access --------------------------------------------------------------------------------


def _kv_tensors(past: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's ``(key, value)``, shaped (batch, heads, sequence, head_dim); None when not mergeable.

    Knows a transformers ``DynamicCache`` (``.layers[i].keys/.values`` since 4.56, ``.key_cache`` and
    ``.value_cache`` before) and Optimum's tuple of per-layer ``(key, value)`` tuples. Sliding-window
    layers and any other layout are not mergeable: their cohorts then decode apart.
    """
    layers: list[tuple[Any, Any]]
    if isinstance(past, tuple):
        if not all(isinstance(layer, tuple) and len(layer) == 2 for layer in past):
            return None
        layers = [(layer[0], layer[1]) for layer in past]
    elif hasattr(past, "layers"):
        if any(getattr(layer, "is_sliding", True) for layer in past.layers):
            return None
        layers = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in past.layers]
    elif hasattr(past, "key_cache") and hasattr(past, "value_cache"):
        if any(getattr(past, "is_sliding", None) or ()):
            return None
        layers = list(zip(past.key_cache, past.value_cache, strict=True))
    else:
        return None
    for key, value in layers:
        if not (isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)):
            return None
        if key.ndim != 4 or value.ndim != 4 or key.shape[:3] != value.shape[:3]:
            return None
    return layers or None


def _with_kv_tensors(past: Any, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """``past`` holding ``layers`` instead of its own tensors (a Cache is updated in place and returned)."""
    if isinstance(past, tuple):
        return tuple((key, value) for key, value in layers)
    if hasattr(past, "layers"):
        for layer, (key, value) in zip(past.layers, layers, strict=True):
            layer.keys, layer.values = key, value
        return past
    past.key_cache[:] = [key for key, _ in layers]
    past.value_cache[:] = [value for _, value in layers]
    return past


def merge_saving(cost: CostModel, a: tuple[int, int], b: tuple[int, int]) -> float:
    """Estimated milliseconds per step saved by merging cohorts of ``(rows, width)`` ``a`` and ``b``.

    A step of ``rows`` rows over ``width`` cache positions costs ``step + rows * (row_step + context
    * width)`` (the cost model's decoding term); merged, both cohorts pay the wider width, and the
    merged step is raised by the model's ``margin``. Merge when the saving is not negative.
    """

    def one(rows: int, width: int) -> float:
        return cost.step + rows * (cost.row_step + cost.context * width)

    together = (1 + cost.margin) * one(a[0] + b[0], max(a[1], b[1]))
    return one(*a) + one(*b) - together


# -- cohorts ----------------------------------------------------------------------------------------


class _Cohort:
    """Rows decoded by one forward pass per step: a left-padded batch with its cache, mask and positions.

    Until its first forward pass (``past`` None) it holds the prompts; afterwards ``tokens`` are the
    tokens each row picked last, fed at the next pass. ``solo``: every call so far was exactly what a
    single request makes (one row, never padded, never merged). ``pinned``: never merged, e.g. a row
    that left a batch at a near tie and must stay the single-request computation.
    """

    __slots__ = ("mask", "past", "pinned", "positions", "rows", "solo", "tokens")

    def __init__(self, rows: list[_Row], *, pinned: bool = False) -> None:
        self.rows = rows
        self.solo = len(rows) == 1
        self.pinned = pinned
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

    def feed(self, engine: Engine) -> torch.Tensor:
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
        logits, self.past = engine._forward(ids, self.mask, positions, self.past)
        self.positions = positions[:, -1:]
        return logits

    def keep(self, keep: list[int], device: torch.device) -> None:
        """Keep only the rows at ``keep`` (in order); cut left padding that no remaining row needs."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[k] for k in keep]
        self.tokens = [self.tokens[k] for k in keep]
        if not keep:
            self.past = None
            return
        index = torch.tensor(keep, dtype=torch.long)
        self.mask, self.positions = self.mask[index], self.positions[index]
        if self.past is None:
            return
        self.past = _select_rows(self.past, index.to(device))
        used = torch.nonzero(self.mask.any(dim=0))
        start = int(used[0]) if used.numel() else 0
        layers = _kv_tensors(self.past) if start else None
        if layers is not None:
            self.mask = self.mask[:, start:]
            cut = [(k[:, :, start:].contiguous(), v[:, :, start:].contiguous()) for k, v in layers]
            self.past = _with_kv_tensors(self.past, cut)


def _merged(a: _Cohort, b: _Cohort) -> _Cohort | None:
    """``a`` and ``b`` as one cohort (``a``'s rows first), or None when their caches cannot be merged."""
    if a.past is None or b.past is None:
        return None
    layers_a, layers_b = _kv_tensors(a.past), _kv_tensors(b.past)
    if layers_a is None or layers_b is None or len(layers_a) != len(layers_b):
        return None
    width = max(a.width, b.width)

    def pad(t: torch.Tensor, by: int) -> torch.Tensor:
        # Left-pad the sequence axis (dim 2 of the cache, dim 1 of a mask) with zeros: masked positions.
        if not by:
            return t
        return F.pad(t, (0, 0, by, 0)) if t.ndim == 4 else F.pad(t, (by, 0))

    pa, pb = width - a.width, width - b.width
    layers = [
        (torch.cat([pad(ka, pa), pad(kb, pb)]), torch.cat([pad(va, pa), pad(vb, pb)]))
        for (ka, va), (kb, vb) in zip(layers_a, layers_b, strict=True)
    ]
    a.past = _with_kv_tensors(a.past, layers)
    a.mask = torch.cat([pad(a.mask, pa), pad(b.mask, pb)])
    a.positions = torch.cat([a.positions, b.positions])
    a.rows, a.tokens = a.rows + b.rows, a.tokens + b.tokens
    a.solo = False
    b.rows, b.tokens, b.past = [], [], None
    return a


# -- the session ------------------------------------------------------------------------------------


class EngineSession:
    """A :class:`flavorkit.types.GenerationSession` over an :class:`~flavorkit_hf.engine.Engine`.

    Requests wait in order of :meth:`add` until fewer than ``max_rows`` rows are live (default:
    ``engine.max_batch_size``; 1 in ``"sequential"`` mode, which decodes one request at a time).
    Whether rows share forward passes follows the engine's mode: never when ``engine.batches`` is
    false (16-bit weights in ``"exact"`` mode, models without position ids; each request then runs
    as a single-row cohort, and the rows still advance together, one token each per step).
    """

    def __init__(self, engine: Engine, max_rows: int | None = None) -> None:
        self.engine = engine
        self.max_rows = max(1, int(max_rows or engine.max_batch_size))
        self._cohorts: list[_Cohort] = []
        self._waiting: deque[_Row] = deque()
        self._next_id = 0
        self._closed = False

    @property
    def live(self) -> int:
        """Rows being decoded (waiting requests excluded)."""
        return sum(len(c.rows) for c in self._cohorts)

    @property
    def waiting(self) -> int:
        """Requests added but not admitted yet (at most ``max_rows`` rows are live)."""
        return len(self._waiting)

    @property
    def cohorts(self) -> list[tuple[int, int]]:
        """``(rows, width)`` of each cohort, i.e. of each forward pass the next step makes."""
        return [(len(c.rows), c.width) for c in self._cohorts]

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Queue requests; they start at the next :meth:`step`. Returns their session ids."""
        if self._closed:
            raise RuntimeError("this generation session is closed")
        ids: list[int] = []
        for request in requests:
            self._waiting.append(self.engine._row(self._next_id, request))
            ids.append(self._next_id)
            self._next_id += 1
        return ids

    def step(self) -> list[Delta]:
        """Advance every live row by one token and admit waiting requests; ``[]`` when nothing is live."""
        deltas: list[Delta] = []
        for cohort in list(self._cohorts):
            deltas += self._advance(cohort)
        self._cohorts = [c for c in self._cohorts if c.rows]
        deltas += self._admit()
        self._merge()
        return deltas

    def close(self) -> None:
        """Drop every row and waiting request with their caches; later steps return ``[]``."""
        self._closed = True
        self._cohorts.clear()
        self._waiting.clear()

    # -- internals --------------------------------------------------------------------------------

    def _advance(self, cohort: _Cohort) -> list[Delta]:
        """Drop the cohort's cancelled rows, then one forward pass and one token for each other row."""
        cohort.keep([k for k, r in enumerate(cohort.rows) if not r.request.cancelled], self.engine.device)
        if not cohort.rows:
            return []
        return self._pick(cohort, cohort.feed(self.engine))

    def _pick(self, cohort: _Cohort, logits: torch.Tensor) -> list[Delta]:
        """Choose each row's token from ``logits``; finished rows leave, near-tie rows are replayed alone."""
        engine = self.engine
        deltas: list[Delta] = []
        keep: list[int] = []
        alone: list[_Row] = []
        for k, row in enumerate(cohort.rows):
            if not cohort.solo and engine._near_tie(row, logits[k]):
                alone.append(row)
                continue
            token = row.sampler.pick(logits[k])
            deltas.append(row.accept(token))
            if not row.done:
                keep.append(k)
                cohort.tokens[k] = token
        cohort.keep(keep, engine.device)
        for row in alone:
            deltas += self._replay(row)
        return deltas

    def _replay(self, row: _Row) -> list[Delta]:
        """Recompute a row alone (its prompt, then its emitted tokens) and pick its next token there.

        The calls are those of a single request, so from here on the row is the single-request
        computation; it continues in a cohort of its own that never merges.
        """
        engine = self.engine
        engine.stats["replays"] += 1
        cohort = _Cohort([row], pinned=True)
        logits = cohort.feed(engine)
        for step, token in enumerate(row.generated):
            if row.sampler.greedy and int(torch.argmax(logits[0])) != token:
                engine.stats["replay_mismatch"] += 1
                log.warning("request %d: replayed token %d differs from the single-request choice", row.index, step)
            cohort.tokens = [token]
            logits = cohort.feed(engine)
        deltas = self._pick(cohort, logits)
        if cohort.rows:
            self._cohorts.append(cohort)
        return deltas

    def _admit(self) -> list[Delta]:
        """Prefill waiting requests into the free rows, grouped by the engine's plan; emit their first tokens."""
        engine = self.engine
        deltas: list[Delta] = []
        admitted: list[_Row] = []
        free = self.max_rows - self.live
        pending: deque[_Row] = deque()
        while self._waiting:
            row = self._waiting.popleft()
            if row.request.cancelled:
                continue
            if row.request.max_tokens <= 0:
                deltas.append(Delta(row.index, "", 0, "length"))
            elif len(admitted) < free:
                admitted.append(row)
            else:
                pending.append(row)
        self._waiting = pending
        requests = [r.request for r in admitted]
        for group in engine.plan(requests, range(len(admitted))):
            cohort = _Cohort([admitted[i] for i in group])
            engine.stats["prefills"] += 1
            deltas += self._pick(cohort, cohort.feed(engine))
            if cohort.rows:
                self._cohorts.append(cohort)
        return deltas

    def _merge(self) -> None:
        """Merge cohorts pairwise while the cost model finds one wider pass cheaper than two passes."""
        if not self.engine.batches:
            return
        while True:
            best: tuple[float, _Cohort, _Cohort] | None = None
            open_ = [c for c in self._cohorts if not c.pinned]
            for i, a in enumerate(open_):
                for b in open_[i + 1 :]:
                    saving = merge_saving(self.engine.cost, (len(a.rows), a.width), (len(b.rows), b.width))
                    if saving >= 0 and (best is None or saving > best[0]):
                        best = (saving, a, b)
            if best is None:
                return
            _, a, b = best
            if _merged(a, b) is None:
                # Caches of a layout that cannot be merged: pin both so they are not tried again.
                a.pinned = b.pinned = True
                continue
            self.engine.stats["merges"] += 1
            self._cohorts = [c for c in self._cohorts if c is not b]

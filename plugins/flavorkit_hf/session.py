"""Continuous batching over :class:`~flavorkit_hf.engine.Engine`: requests join a running batch between steps.

An :class:`EngineSession` holds *cohorts*: groups of rows decoded by one forward pass per step, each
a :class:`~flavorkit_hf.decoding.Batch` (left-padded, with its own KV cache, attention mask and
per-row position ids), the very batch the engine's ``generate`` decodes. A
:meth:`~EngineSession.step` advances every cohort once (one forward each), then admits waiting
requests while fewer than ``max_batch_size`` rows are live: they are prefilled in the groups the
engine's cost model plans (one forward per group) and pick their first token in that same step.
Finally cohorts are merged when the cost model says one wider pass is cheaper than two: the
narrower cohort's cache is left-padded along the sequence axis with masked positions up to the
wider one's, the caches, masks, positions and next tokens are concatenated along the batch axis,
and from the next step on every row of both shares one forward pass. Finished and cancelled rows
leave their cohort (their cache rows are dropped), and padding columns no row needs any more are
cut off.

Guarantees are the engine's. In ``batching="exact"`` a greedy row of a batched cohort whose top-2
logits nearly tie leaves it; its prompt and the tokens it already produced are replayed alone with
the very calls a single request makes, so it continues as the single-request computation, in a
cohort of its own that never merges again (it shares the session's steps, not their forward
passes). A row prefilled alone and not yet merged *is* the single-request computation and needs no
check. Each row samples with its own seeded generator. ``max_tokens``, end of sequence, special
tokens and text increments are handled by the shared row state (:mod:`flavorkit_hf.decoding`), as
in ``generate``. What only a session does is here: admitting rows, merging cohorts and cutting the
padding no row needs any more. Cache access for those (what differs between transformers ``Cache``
objects and Optimum's tuples) is kept in :func:`_kv_tensors` and :func:`_with_kv_tensors`.

The session is typed against :class:`SessionEngine`, so this module does not import the engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from flavorkit.sdk import CostModel, Delta, GenerationRequest
from flavorkit_hf.decoding import Batch, DecodingEngine, Row, replay_alone

__all__ = ["EngineSession", "SessionEngine", "merge_saving"]


class SessionEngine(DecodingEngine, Protocol):
    """What a session needs of :class:`~flavorkit_hf.engine.Engine`: a batch's needs, rows and the batching plan."""

    max_batch_size: int
    cost: CostModel

    @property
    def batches(self) -> bool:
        """Whether several requests may share a forward pass."""
        ...

    def row(self, index: int, request: GenerationRequest) -> Row:
        """The decoding state of ``request``, whose deltas carry ``index``."""
        ...

    def plan(self, requests: Sequence[GenerationRequest], todo: Sequence[int]) -> list[list[int]]:
        """Groups of request indices to prefill together."""
        ...


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


class _Cohort(Batch):
    """A session's batch: it also cuts the padding no row needs when rows leave, and may merge.

    ``pinned``: never merged, e.g. a row that left a batch at a near tie and must stay the
    single-request computation.
    """

    __slots__ = ("pinned",)

    def __init__(self, rows: list[Row], *, pinned: bool = False) -> None:
        super().__init__(rows)
        self.pinned = pinned

    def keep(self, keep: list[int], device: torch.device) -> None:
        """Keep only the rows at ``keep`` (in order); cut left padding that no remaining row needs."""
        if len(keep) == len(self.rows):
            return
        super().keep(keep, device)
        if self.past is None:
            return
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

    def __init__(self, engine: SessionEngine, max_rows: int | None = None) -> None:
        self.engine = engine
        self.max_rows = max(1, int(max_rows or engine.max_batch_size))
        self._cohorts: list[_Cohort] = []
        self._waiting: deque[Row] = deque()
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
            self._waiting.append(self.engine.row(self._next_id, request))
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
        return list(cohort.step(self.engine, self._replay))

    def _replay(self, row: Row) -> list[Delta]:
        """Recompute a row that left its cohort at a near tie alone, and pick its next token there.

        The calls are those of a single request, so from here on the row is the single-request
        computation; it continues in a cohort of its own that never merges.
        """
        cohort = _Cohort([row], pinned=True)
        deltas = list(cohort.pick(self.engine, replay_alone(self.engine, cohort), self._replay))
        if cohort.rows:
            self._cohorts.append(cohort)
        return deltas

    def _admit(self) -> list[Delta]:
        """Prefill waiting requests into the free rows, grouped by the engine's plan; emit their first tokens."""
        engine = self.engine
        deltas: list[Delta] = []
        admitted: list[Row] = []
        free = self.max_rows - self.live
        pending: deque[Row] = deque()
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
            deltas += cohort.step(engine, self._replay)
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

"""Length-aware batching: a cost model of one padded batch, and the plan that uses it.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

A padded batch computes every row at the batch's widest prompt and runs until its longest
request ends, so batching requests of very different lengths can cost more than answering them one
by one. :class:`CostModel` estimates both (in milliseconds, from coefficients measured per backend
with ``python -m benchmarks.calibrate``), and :meth:`CostModel.plan` splits a batch into the groups
with the least estimated cost. Backends that decode padded batches use it; see
docs/architecture.md, "Length-aware batching".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["CostModel"]


@dataclass(frozen=True)
class CostModel:
    """Estimated time of a padded batch: a prompt pass, then one step per generated token.

    For a group of ``rows`` requests padded to ``width`` prompt tokens, producing up to ``steps``
    tokens (the largest ``max_tokens``)::

        prompt pass = rows * width * (prompt_token + prompt_attention * width)
        step t      = step + live_rows * (row_step + context * (width + t))

    ``step`` is the work a step shares between its rows (reading the weights), ``row_step`` a row's
    own work and ``context`` its attention over the KV cache. Padding is paid in full: a short prompt
    in a wide batch costs ``width`` positions in the prompt pass and in every step. ``live_rows`` is
    the whole batch unless ``rows_leave`` (the backend drops finished rows from the batch). One
    request alone is the same formula with ``rows = 1``. A group is chosen only when its estimate,
    raised by ``margin``, is below that of the requests apart (or of other groups).
    """

    prompt_token: float
    prompt_attention: float
    step: float
    row_step: float
    context: float
    rows_leave: bool = False
    margin: float = 0.1

    def single(self, length: int, tokens: int) -> float:
        """Estimated milliseconds of one request with a ``length``-token prompt and ``tokens`` to produce."""
        return self.batch([length], [tokens])

    def batch(self, lengths: Sequence[int], tokens: Sequence[int]) -> float:
        """Estimated milliseconds of one padded batch of these prompt lengths and ``max_tokens``."""
        return self._estimate(len(lengths), max(lengths), max(tokens), sum(tokens), sum(n * n for n in tokens))

    def _estimate(self, rows: int, width: int, steps: int, total: int, squares: int) -> float:
        """:meth:`batch` from the group's size, width, steps and the sum of max_tokens and of its squares."""
        prompt = rows * width * (self.prompt_token + self.prompt_attention * width)
        if not self.rows_leave:
            total, squares = rows * steps, rows * steps * steps
        # Row i costs n_i * (row_step + context * (width + n_i / 2)) over its n_i steps.
        decode = steps * self.step + total * (self.row_step + self.context * width) + self.context * squares / 2
        return prompt + decode

    def plan(
        self,
        lengths: Sequence[int],
        tokens: Sequence[int],
        max_rows: int,
        fits: Callable[[int, int], bool] | None = None,
    ) -> list[list[int]]:
        """Indices grouped into padded batches with the least total estimated cost.

        Requests are ordered by prompt length (then ``max_tokens``), and again by ``max_tokens``
        (then length); each order is cut into consecutive groups of at most ``max_rows`` by dynamic
        programming, and the cheaper of the two plans wins. ``fits(width, steps)`` can forbid a group
        (a context limit, say). A group of several requests is chosen only when ``(1 + margin) *
        batch`` beats the alternatives, so by the model a plan is never slower than one request at a
        time. Groups come back ordered by their first index, each sorted.
        """
        n = len(lengths)
        if len(tokens) != n:
            raise ValueError(f"{n} prompt lengths but {len(tokens)} max_tokens")
        by_length = sorted(range(n), key=lambda i: (lengths[i], tokens[i], i))
        by_tokens = sorted(range(n), key=lambda i: (tokens[i], lengths[i], i))
        _, groups = min(
            (self._cut(order, lengths, tokens, max(1, max_rows), fits) for order in (by_length, by_tokens)),
            key=lambda plan: plan[0],
        )
        return sorted((sorted(g) for g in groups), key=min)

    def _cut(
        self,
        order: Sequence[int],
        lengths: Sequence[int],
        tokens: Sequence[int],
        max_rows: int,
        fits: Callable[[int, int], bool] | None,
    ) -> tuple[float, list[list[int]]]:
        """The cheapest cut of ``order`` into consecutive groups: (estimated cost, groups)."""
        n = len(order)
        best = [0.0] + [float("inf")] * n
        cut = [0] * (n + 1)
        for end in range(1, n + 1):
            width = steps = total = squares = 0
            for start in range(end - 1, max(-1, end - 1 - max_rows), -1):
                i = order[start]
                width, steps = max(width, lengths[i]), max(steps, tokens[i])
                total, squares = total + tokens[i], squares + tokens[i] * tokens[i]
                rows = end - start
                if rows == 1:
                    cost = self.single(lengths[i], tokens[i])
                elif fits is not None and not fits(width, steps):
                    continue
                else:
                    cost = (1 + self.margin) * self._estimate(rows, width, steps, total, squares)
                if best[start] + cost < best[end]:
                    best[end], cut[end] = best[start] + cost, start
        groups: list[list[int]] = []
        end = n
        while end > 0:
            groups.append(list(order[cut[end] : end]))
            end = cut[end]
        return best[n], groups

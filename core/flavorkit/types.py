"""Plain data types that cross the boundary between the core and a backend.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

These are deliberately small, dependency-free dataclasses: a backend author can build and test
them without MLflow, pydantic or flavorkit's packager.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Artifacts",
    "Capability",
    "Delta",
    "FinishReason",
    "GenerationRequest",
    "GenerationSession",
    "LogitsProcessor",
    "Message",
    "RuntimeInfo",
    "close_stream",
]

FinishReason = Literal["stop", "length"]

#: A chat message as backends receive it: ``{"role": ..., "content": ...}``, already validated. With
#: ``tools`` (spec version 3) an assistant message may also carry ``tool_calls`` and a ``tool``
#: message a ``tool_call_id``; see ``WrapperBackend.encode``.
Message = Mapping[str, Any]


class Capability(str, enum.Enum):
    """What a backend can do beyond the required contract; the conformance kit skips the rest."""

    #: ``generate`` yields text as tokens are produced, not all at the end.
    STREAMING = "streaming"
    #: ``generate`` runs several requests together (padded batch, continuous batching, ...).
    BATCHING = "batching"
    #: ``temperature``/``top_p``/``top_k`` sampling is honoured; without it only greedy is allowed.
    SAMPLING = "sampling"
    #: Sampling with the same ``seed`` repeats exactly.
    SEEDED_SAMPLING = "seeded_sampling"
    #: The backend runs on a GPU (CUDA, DirectML, ...); its conformance run needs one.
    GPU = "gpu"
    #: Requests may join while others decode (``flavorkit serve``). A backend with a
    #: ``generate_session`` hook does it itself; without one, the core opens a ``generate`` stream per
    #: group of joining requests and advances the streams alternately from one thread, so each
    #: stream must own its decoding state (its own generator, KV cache and sampler).
    #:
    #: .. versionadded:: 2
    CONTINUOUS_BATCHING = "continuous_batching"
    #: Before each token is picked, the backend hands the request's next-token logits to
    #: ``request.logits_processor`` (when set), picks from what it leaves, then tells it the token
    #: (:class:`LogitsProcessor`). The core builds on this ``response_format`` (JSON schema),
    #: ``tools`` and ``tool_choice``: a grammar (llguidance) masks the tokens that would break it.
    #: A backend also implements the ``guidance_tokenizer`` hook.
    #:
    #: .. versionadded:: 3
    GUIDED_DECODING = "guided_decoding"
    #: Greedy answers are independent of the batch: a greedy request gets exactly (token for token)
    #: the answer it gets alone (batch size 1), whichever requests share its ``generate`` call or
    #: its session, join it, finish early or are cancelled, and however long the prompts are. Padded
    #: batches usually round differently from one row (other kernel paths, other matmul shapes), so
    #: a backend keeps this promise by construction: it decodes greedy rows alone where batched
    #: logits could differ, or proves per machine that they do not. Depends on the options (a faster
    #: batching mode may give it up): the ``capabilities`` hook receives them. Seeded sampling is
    #: only best effort across batches (like OpenAI's ``seed``): the same seed repeats alone, not
    #: necessarily in another batch.
    #:
    #: .. versionadded:: 5
    BATCH_INVARIANT = "batch_invariant"


@runtime_checkable
class LogitsProcessor(Protocol):
    """Edits one request's next-token logits before the backend picks a token (spec version 3).

    The core sets one on a :class:`GenerationRequest` for a guided request; a backend that declares
    :attr:`Capability.GUIDED_DECODING` calls it at every decoding step of that request, the first
    included: ``process`` on the row of logits the token will be picked from, then, once the
    token is chosen (greedy or sampled, from the processed logits), ``accept`` with it, the end of
    sequence token included. Rows without a processor are left alone, so one batch may mix them.
    """

    def process(self, logits: Any) -> None:
        """Set, in place, the logits of the tokens that must not come next to ``-inf``.

        ``logits`` is a 1-D float numpy array (or a writable view of one row of the batch's
        logits), at least as long as the tokenizer's vocabulary; extra columns are masked.
        """
        ...

    def accept(self, token: int) -> None:
        """Record the token picked for this request from the processed logits."""
        ...


@dataclass(slots=True)
class GenerationRequest:
    """One completion to produce: the prompt token ids and the effective sampling settings.

    The core expands ``n`` into ``n`` requests, so a backend always produces exactly one sequence
    per request. ``cancelled`` is set by the core when it no longer needs more tokens (a stop
    string matched); a backend should check it between steps and drop the request.
    """

    prompt_ids: Sequence[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    cancelled: bool = False
    #: Set by the core for guided requests (spec version 3): see :class:`LogitsProcessor`. Only
    #: backends that declare :attr:`Capability.GUIDED_DECODING` are given one.
    logits_processor: LogitsProcessor | None = None

    @property
    def greedy(self) -> bool:
        """True when decoding must be deterministic argmax (temperature 0)."""
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class Delta:
    """One increment produced by ``generate`` for the request at ``index`` in the batch.

    ``tokens`` is how many generated tokens this increment accounts for (text may be empty while a
    multi-byte character is incomplete). The last delta of a request carries ``finish_reason``:
    ``"stop"`` when the model ended it (EOS), ``"length"`` when ``max_tokens`` or the context ran out.
    """

    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: FinishReason | None = None


@dataclass(slots=True)
class Artifacts:
    """What a backend wants packaged: files, pinned requirements and metadata.

    ``files`` maps an artifact name to a local file or directory; the packager copies each into
    the model and hands the packaged paths back to ``load`` under the same names.
    """

    files: dict[str, str]
    requirements: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """Facts about a loaded model that the core needs to validate requests."""

    #: Maximum number of tokens (prompt + completion) the model can attend to.
    context_length: int
    #: The name reported in the ``model`` field of responses.
    model_name: str = "flavorkit-model"


@runtime_checkable
class GenerationSession(Protocol):
    """A running batch that new requests can join between decoding steps (continuous batching).

    Returned by the optional ``generate_session`` hook (spec version 2). The core drives it from one
    thread: ``add`` between steps, ``step`` in a loop, ``close`` when the server goes idle or stops.
    Cancellation is the request's ``cancelled`` flag, as in ``generate``: a request whose flag is set
    is dropped at the next step and needs no more deltas.
    """

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Admit requests, which start at the next :meth:`step`; return their ids, unique in this session."""
        ...

    def step(self) -> list[Delta]:
        """Advance every live request by one decoding step (a new one: its prompt and first token).

        Deltas carry the ids returned by :meth:`add` as ``index`` and follow ``generate``'s rules
        (one token per delta, a finish reason on each request's last). An empty list means that no
        request is live any more. A session may give requests admitted since the last call a step
        of their own (prompt and first token), so that their first token is not held back by a
        step of the running ones; the running ones then advance at the next call.
        """
        ...

    def close(self) -> None:
        """Drop every request still in the session and free its state (KV caches, generators)."""
        ...


def close_stream(stream: object) -> None:
    """Close a backend's stream now if it can be closed, so its runtime state is freed at once, not at GC.

    The hook spec lets ``generate`` return any iterable; a generator (or any object with ``close``)
    is closed, a plain iterator is left alone.
    """
    close = getattr(stream, "close", None)
    if close is not None:
        close()

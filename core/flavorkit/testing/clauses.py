"""The clauses of the conformance kit: stable names, one-line summaries and the capability each needs.

Internal: not part of the plugin SDK; the kit's public names are in :mod:`flavorkit.testing`.

A clause is one promise of the backend contract, checked by one test of
:class:`~flavorkit.testing.BackendConformance` (``test_<name>``). The names are part of the kit's
public interface: they appear in ``expected_failures``, in the ``flavorkit check`` table and in the
JSON report, and are never renamed (a new check gets a new name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flavorkit.types import Capability

__all__ = ["CLAUSES", "Clause", "clause", "clause_of"]

_ATTR = "_flavorkit_clause"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Clause:
    """One promise of the contract; ``capability`` is None for the clauses every backend must pass."""

    name: str
    summary: str
    capability: Capability | None = None
    #: The clause runs only for backends that do *not* declare this capability (it checks that
    #: what the capability would honour is refused); skipped, with the reason, for the others.
    without: Capability | None = None

    @property
    def required(self) -> bool:
        """True when no capability gates the clause: it runs (and must pass) for every backend."""
        return self.capability is None and self.without is None


_ALL = (
    Clause("entry_point_light", "the entry point loads without importing heavy runtimes (torch, onnxruntime, ...)"),
    Clause("hook_spec", "the plugin implements the hook spec: required hooks, no unknown or unmarked hooks"),
    Clause(
        "artifacts_manifest", "artifacts() returns existing files; the whole-model manifest lists and verifies them"
    ),
    Clause("requirements_pinned", "packaged requirements are pinned, installed at that version and importable"),
    Clause("signature", "the signature of each supported task is valid and its input example predicts"),
    Clause("greedy_deterministic", "greedy decoding repeats exactly, across calls, loads and threads"),
    Clause("max_tokens", "max_tokens is a hard limit on the tokens generate() yields"),
    Clause("stop_strings", "stop strings never appear in the output, which ends just before the first match"),
    Clause("n_choices", "n gives n choices, each equal to the greedy answer"),
    Clause("usage", "usage counts are consistent with encode() and with the tokens generate() reports"),
    Clause(
        "chat_template",
        "encode() keeps every message (system, earlier turns) and matches the model's own chat template",
    ),
    Clause(
        "raw_prompt",
        "a text-generation prompt is tokenized as plain text by encode_text() (no chat template) and continued exactly",
    ),
    Clause("finish_reason", "every request ends with exactly one finish_reason, 'length' when cut short"),
    Clause("stream_matches_predict", "the joined stream equals the non-stream result"),
    Clause(
        "special_tokens",
        "answers never contain the text of a special token of the model's tokenizer (e.g. '<|im_end|>')",
    ),
    Clause("batch_matches_single", "a batch gives each request the same result as running it alone"),
    Clause(
        "cancellation",
        "a cancelled request is dropped promptly without disturbing the others; a stream closed part-way leaves "
        "the handle ready",
    ),
    Clause("invalid_requests", "invalid requests get MlflowException INVALID_PARAMETER_VALUE naming the field"),
    Clause("package_load_predict", "package -> mlflow.pyfunc.load_model -> predict returns chat completions"),
    Clause("fresh_process", "the packaged model loads and predicts the same answer in a fresh process"),
    Clause(
        "tamper_detected", "a modified or added artifact file, or edited plugin code, fails the load naming the file"
    ),
    Clause(
        "streaming_incremental", "generate() yields text as it is produced, in several deltas", Capability.STREAMING
    ),
    Clause(
        "batching_interleaved", "requests of one batch are decoded together, not one after another", Capability.BATCHING
    ),
    Clause(
        "batch_invariant",
        "greedy answers on prompts of 60+ tokens equal the answer alone in batches of 2, 4 and 8, with rows "
        "finishing early or cancelled, and in a session that rows join mid-way",
        Capability.BATCH_INVARIANT,
    ),
    Clause(
        "sampling",
        "temperature/top_k sampling is honoured: top_k=1 is greedy, high temperature varies",
        Capability.SAMPLING,
    ),
    Clause(
        "seeded_sampling",
        "sampling with the same seed repeats exactly; choice i of n is seeded seed + i",
        Capability.SEEDED_SAMPLING,
    ),
    Clause(
        "continuous_batching",
        "a request joining a running session starts within two steps and gets its own answer; cancelled ones stop",
        Capability.CONTINUOUS_BATCHING,
    ),
    Clause(
        "guided_tokenizer",
        "guidance_tokenizer() returns an llguidance.LLTokenizer that numbers tokens as encode() does",
        Capability.GUIDED_DECODING,
    ),
    Clause(
        "guided_logits_processor",
        "each request's logits processor gets every step's logits before the pick and then the picked token, "
        "row by row in a batch; its end-of-sequence token ends the request",
        Capability.GUIDED_DECODING,
    ),
    Clause(
        "guided_json_schema",
        "response_format json_schema answers that end with 'stop' parse and follow the schema: alone, with n=2, "
        "in a batch and streamed",
        Capability.GUIDED_DECODING,
    ),
    Clause(
        "guided_mixed_batch",
        "requests with different grammars, and one with none, share a batch and each follows its own",
        Capability.GUIDED_DECODING,
    ),
    Clause(
        "guided_tool_choice",
        "tool_choice 'required' or a named function gives well-formed calls whose arguments follow the tool's "
        "parameters, streamed too",
        Capability.GUIDED_DECODING,
    ),
    Clause(
        "guided_refused",
        "without guided_decoding, response_format json_schema/json_object and tools are refused naming the field "
        "and the backend",
        without=Capability.GUIDED_DECODING,
    ),
    Clause("gpu", "a GPU is visible to the backend that declares it needs one", Capability.GPU),
)

#: Every clause, in the order the kit runs them.
CLAUSES: dict[str, Clause] = {c.name: c for c in _ALL}


def clause(name: str) -> Callable[[F], F]:
    """Mark a test method as the check of clause ``name``."""
    if name not in CLAUSES:
        raise KeyError(f"unknown clause {name!r}")

    def mark(fn: F) -> F:
        setattr(fn, _ATTR, CLAUSES[name])
        return fn

    return mark


def clause_of(fn: Any) -> Clause | None:
    """The clause a test function checks, or None when it is not a conformance test."""
    return getattr(fn, _ATTR, None)

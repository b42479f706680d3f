"""The conformance clauses by area, one mixin each, as pandas splits its base extension tests.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.

:class:`~flavorkit.testing.BackendConformance` combines them all and is what a backend's test
suite subclasses. Each mixin derives from :class:`~flavorkit.testing.mixins.base.ConformanceBase`
(the options, fixtures and clause gate), so one area can also run on its own, e.g. while working
on packaging::

    class TestMyBackendPackaging(PackagingClauses):
        backend = "my-backend"
        ...

====================  ======================================================================
mixin                 clauses
====================  ======================================================================
ProcessClauses        entry_point_light, hook_spec, fresh_process, gpu
PackagingClauses      artifacts_manifest, requirements_pinned, signature, package_load_predict,
                      tamper_detected
ContractClauses       max_tokens, stop_strings, n_choices, usage, chat_template, raw_prompt,
                      finish_reason, special_tokens, invalid_requests
GenerationClauses     greedy_deterministic, cancellation, sampling, seeded_sampling
BatchingClauses       batch_matches_single, batching_interleaved, batch_invariant
StreamingClauses      stream_matches_predict, streaming_incremental, continuous_batching
GuidedClauses         guided_tokenizer, guided_logits_processor, guided_json_schema,
                      guided_mixed_batch, guided_tool_choice, guided_refused
====================  ======================================================================
"""

from __future__ import annotations

from flavorkit.testing.mixins.base import ConformanceBase
from flavorkit.testing.mixins.batching import BatchingClauses
from flavorkit.testing.mixins.contract import ContractClauses
from flavorkit.testing.mixins.generation import GenerationClauses
from flavorkit.testing.mixins.guided import GuidedClauses
from flavorkit.testing.mixins.packaging import PackagingClauses
from flavorkit.testing.mixins.process import ProcessClauses
from flavorkit.testing.mixins.streaming import StreamingClauses

__all__ = [
    "BatchingClauses",
    "ConformanceBase",
    "ContractClauses",
    "GenerationClauses",
    "GuidedClauses",
    "PackagingClauses",
    "ProcessClauses",
    "StreamingClauses",
]

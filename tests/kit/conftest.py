"""Fixtures of the kit's tests: the tiny model with a context long enough for requests with tools.

The tiny checkpoint of ``tests/conftest.py`` has a 256-token context, less than the prompt of a
request with tools in the generic form (the tools are described in the system message), so the
``guided_tool_choice`` clause skips on it. The same weights and tokenizer with a 1024-token context
run every clause.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: The context of the long tiny model: the generic tool prompt of the kit's tools is about 450 tokens.
LONG_CONTEXT = 1024


@pytest.fixture(scope="session")
def tiny_hf_long() -> Path:
    """The tiny transformers checkpoint with a 1024-token context (same seeded weights and tokenizer)."""
    from flavorkit.testing.models import tiny_checkpoint

    return tiny_checkpoint(context_length=LONG_CONTEXT)


@pytest.fixture(scope="session")
def tiny_ort_long(tiny_hf_long: Path) -> Path:
    """The long tiny checkpoint as an fp32 ORT-genai folder."""
    from flavorkit_onnxgenai.convert import convert_checkpoint

    return convert_checkpoint(tiny_hf_long, precision="fp32")

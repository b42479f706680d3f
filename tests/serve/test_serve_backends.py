"""``flavorkit serve`` with the openai client on the optimum-onnx backend (onnx-cpu and transformers: other files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_fixtures import running
from stacks import needs_optimum

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")
pytestmark = needs_optimum

from flavorkit.serve import create_app  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me about batching."}]


def test_optimum_onnx_streams_what_it_answers(tiny_hf: Path, tmp_path: Path) -> None:
    import flavorkit
    from flavorkit_hf.export import export_checkpoint

    path = tmp_path / "tiny-optimum"
    flavorkit.package(
        model=str(export_checkpoint(tiny_hf)), backend="optimum-onnx", path=path, generation={"temperature": 0.0}
    )
    with running(create_app(str(path))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        whole = client.chat.completions.create(model="tiny-optimum", messages=MESSAGES, max_tokens=16, n=2)
        assert [c.index for c in whole.choices] == [0, 1]
        assert whole.choices[0].message.content == whole.choices[1].message.content  # greedy
        chunks = client.chat.completions.create(model="tiny-optimum", messages=MESSAGES, max_tokens=16, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content

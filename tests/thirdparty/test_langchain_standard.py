"""LangChain's standard chat-model suite (``ChatModelIntegrationTests``) against ``flavorkit serve`` on SmolLM2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from serve_fixtures import running

langchain_openai = pytest.importorskip("langchain_openai")
integration_tests = pytest.importorskip("langchain_tests.integration_tests")
pytest.importorskip("prometheus_client")

from langchain_core.language_models import BaseChatModel  # noqa: E402

from flavorkit.serve import create_app  # noqa: E402

NAME = "smollm2-chat"
_FP32_LOOP = (
    "SmolLM2-135M in fp32 (transformers) loops inside a string ('The cat was a cat, and the cat was a cat, ...') "
    "until max_tokens, so finish_reason is length and nothing parses; unconstrained it loops the same way ('A cat's "
    "favorite food is a cat's favorite food, ...')"
)
_TOOL_VALUE = (
    "SmolLM2-135M calls magic_function with input 100, not 3 (the call is well formed: its name, an id and an "
    "integer within the schema's bounds)"
)

# The async standard tests run on one event loop for the whole session: langchain-openai caches its
# async HTTP client, which a loop per test would leave bound to a closed loop. The mark applies to
# the synchronous tests too, where pytest-asyncio warns and does nothing.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.filterwarnings(
        "ignore:The test <Function .*> is marked with '@pytest.mark.asyncio':pytest.PytestWarning"
    ),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, smollm2_ort: Path) -> Iterator[str]:
    """``flavorkit serve`` on SmolLM2-135M-Instruct (onnx-cpu int4, greedy): the OpenAI base URL."""
    import flavorkit

    path = tmp_path_factory.mktemp("langchain-standard") / NAME
    flavorkit.package(model=str(smollm2_ort), backend="onnx-cpu", path=path, generation={"temperature": 0.0})
    with running(create_app(str(path))) as url:
        yield f"{url}/v1"


class TestFlavorkitServe(integration_tests.ChatModelIntegrationTests):
    """``ChatOpenAI`` pointed at ``flavorkit serve``, with the capabilities the server really has."""

    base_url: str = ""

    @pytest.fixture(autouse=True)
    def _server(self, served: str) -> None:
        type(self).base_url = served

    @property
    def chat_model_class(self) -> type[Any]:
        return langchain_openai.ChatOpenAI  # type: ignore[no-any-return]

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": NAME,
            "base_url": self.base_url,
            "api_key": "x",
            "temperature": 0,
            "stream_usage": True,
            "max_retries": 0,
            # The integration suite sets no limit (the server's default is 256); 100 is the unit suite's.
            "max_tokens": 100,
        }

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        # One model per server: another name is a 404 (model_not_found).
        return False

    # -- answer-quality failures of the 135M model (the server's answers are well formed) ---------

    @pytest.mark.xfail(reason=_TOOL_VALUE)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=_TOOL_VALUE)
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(
        reason="SmolLM2-135M repeats itself inside the forced Joke call's punchline string ('cat-joke is a "
        "cat-joke, ...') until max_tokens, so finish_reason is length and nothing parses (pydantic v1 models "
        "go through method='function_calling')"
    )
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(
        reason="json_object only makes the answer some JSON object; SmolLM2-135M nests "
        '{"setup":{"setup":... until max_tokens (unconstrained, it writes the same nesting in a code block)'
    )
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(
        reason="with tool_choice auto, SmolLM2-135M answers 'What is the weather in San Francisco, CA?' in text "
        "instead of calling get_weather"
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)


@pytest.fixture(scope="module")
def served_transformers(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path) -> Iterator[str]:
    """``flavorkit serve`` on SmolLM2-135M-Instruct with the transformers backend (fp32, greedy)."""
    import flavorkit

    path = tmp_path_factory.mktemp("langchain-standard-hf") / NAME
    flavorkit.package(model=str(smollm2_hf), backend="transformers", path=path, generation={"temperature": 0.0})
    with running(create_app(str(path))) as url:
        yield f"{url}/v1"


class TestFlavorkitServeTransformers(TestFlavorkitServe):
    """The same suite against the transformers backend: one contract, every backend."""

    @pytest.fixture(autouse=True)
    def _server(self, served_transformers: str) -> None:  # type: ignore[override]
        type(self).base_url = served_transformers

    # -- answer quality of SmolLM2-135M in fp32 (the transformers backend) -------------------------

    @pytest.mark.xfail(reason=_FP32_LOOP)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(
        self, model: BaseChatModel, schema_type: Literal["pydantic", "typeddict", "json_schema"]
    ) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_FP32_LOOP)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(
        self, model: BaseChatModel, schema_type: Literal["pydantic", "typeddict", "json_schema"]
    ) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_FP32_LOOP)
    def test_structured_output_optional_param(self, model: BaseChatModel) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(
        reason="SmolLM2-135M in fp32 (transformers) keeps writing the forced call's answer_style string until "
        "max_tokens, so the call never closes and no tool call is returned"
    )
    def test_bind_runnables_as_tools(self, model: BaseChatModel) -> None:
        super().test_bind_runnables_as_tools(model)

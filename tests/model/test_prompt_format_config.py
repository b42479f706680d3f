"""The packaged configuration's ``prompt_format`` (version 2) and the versions before it.

A version 1 configuration (flavorkit before spec version 4) has no ``prompt_format`` and reads as
``chat_template``: its text-generation prompts keep going through the chat template. Version 2
always records the format; a chat model is always ``chat_template``.
"""

from __future__ import annotations

from typing import Any

import pytest

from flavorkit.errors import ModelConfigError
from flavorkit.model.config import CONFIG_VERSION, READABLE_VERSIONS, PackagedConfig


@pytest.fixture(autouse=True)
def _mlflow_store() -> None:
    """Replaces conftest's per-test MLflow store: nothing here logs to a tracking store."""


def stored(version: int = CONFIG_VERSION, **fields: Any) -> dict[str, Any]:
    """A stored ``model_config`` as the packager of ``version`` wrote it."""
    raw: dict[str, Any] = {
        "config_version": version,
        "flavorkit_version": "0.1.0",
        "spec_version": 3 if version == 1 else 4,
        "backend": "echo",
        "plugin": {"object": "fk_echo:backend"},
        "task": "text-generation",
    }
    if version >= 2:
        raw["prompt_format"] = "raw"
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


def test_this_flavorkit_writes_version_2_and_reads_1_and_2() -> None:
    assert CONFIG_VERSION == 2 and READABLE_VERSIONS == (1, 2)


def test_a_version_1_config_keeps_templating_text_generation_prompts() -> None:
    config = PackagedConfig.from_model_config(stored(1))
    assert config.config_version == 1 and config.prompt_format == "chat_template"
    assert PackagedConfig.from_model_config(stored(1, task="llm/v1/chat")).prompt_format == "chat_template"


def test_a_version_2_config_says_how_its_prompts_are_tokenized() -> None:
    assert PackagedConfig.from_model_config(stored()).prompt_format == "raw"
    assert PackagedConfig.from_model_config(stored(prompt_format="chat_template")).prompt_format == "chat_template"
    config = PackagedConfig.from_model_config(stored(task="llm/v1/chat", prompt_format="chat_template"))
    assert config.to_model_config()["prompt_format"] == "chat_template"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (stored(prompt_format=None), "missing"),
        (stored(prompt_format="jinja"), "unknown prompt format 'jinja'"),
        (stored(task="llm/v1/chat"), "a chat model renders its messages with the chat template"),
        (stored(1, prompt_format="raw"), "added in version 2"),
    ],
)
def test_a_bad_prompt_format_is_a_config_error_naming_the_field(raw: dict[str, Any], detail: str) -> None:
    with pytest.raises(ModelConfigError) as exc:
        PackagedConfig.from_model_config(raw)
    assert exc.value.field == "prompt_format"
    assert detail in str(exc.value)


@pytest.mark.parametrize("version", [0, 3, True, "2", None])
def test_an_unknown_config_version_is_refused(version: Any) -> None:
    with pytest.raises(ModelConfigError) as exc:
        PackagedConfig.from_model_config(stored(prompt_format="raw") | {"config_version": version})
    assert exc.value.field == "config_version"
    assert "1, 2" in str(exc.value)

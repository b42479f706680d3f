"""MLflow signatures and input examples of the core tasks.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

``llm/v1/chat`` uses the field names of MLflow's own ``llm/v1/chat`` schema, restricted to the
fields flavorkit honours, plus OpenAI's fields that clients send by default (``store``, ``tools: []``,
``logprobs: false``, ...), which flavorkit ignores or accepts at their neutral value only.
``text-generation`` is ``{"prompt": str}`` in and ``str`` out, with the same optional settings.
``stop``, the numeric settings and the message properties are typed ``Any`` (see
:func:`_generation_columns` and docs/architecture.md section 4); flavorkit validates them itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

__all__ = ["CALL_PARAMS", "CHAT", "TASKS", "TEXT", "input_example", "standard_signature"]

#: MLflow ``params`` a packaged model declares: generation settings for one ``predict`` call, in
#: MLflow's types (``stop`` a list of strings). The request's own fields win over them.
CALL_PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop")

CHAT = "llm/v1/chat"
TEXT = "text-generation"
TASKS = (CHAT, TEXT)

# flavorkit.schema's TEXT_COMPAT_FIELDS and CHAT_COMPAT_FIELDS (the layers keep this module from
# importing it; tests/runtime/test_openai_compat.py checks that they agree).
_TEXT_COMPAT = ("user", "presence_penalty", "frequency_penalty", "logit_bias")
_CHAT_COMPAT = (
    *_TEXT_COMPAT,
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
    "prediction",
    "modalities",
    "tools",
    "tool_choice",
    "response_format",
    "logprobs",
    "top_logprobs",
)


def _compat_columns(names: tuple[str, ...]) -> list[Any]:
    """OpenAI's compatibility fields (ignored, or accepted at a neutral value), typed ``Any``.

    Listed so that MLflow passes them on (it drops top-level fields the signature does not name,
    and its typed checks reject objects and lists it does not know); flavorkit validates them.
    """
    from mlflow.types.schema import AnyType, ColSpec

    return [ColSpec(name=name, type=AnyType(), required=False) for name in names]


def _generation_columns(*, with_n: bool) -> list[Any]:
    from mlflow.types.schema import AnyType, ColSpec, DataType

    # Numeric settings are typed Any: MLflow turns a batch in which only some rows set an integer
    # field into a float column with NaN, which a `long` column rejects, and a `double` column
    # rejects plain ints other than 0 and 1 (so `temperature: 2` would fail). flavorkit validates
    # these fields itself, with the field name and allowed range.
    cols = [
        ColSpec(name="temperature", type=AnyType(), required=False),
        ColSpec(name="max_tokens", type=AnyType(), required=False),
        # OpenAI (and flavorkit) accept a string or a list of strings for stop.
        ColSpec(name="stop", type=AnyType(), required=False),
    ]
    if with_n:
        cols.append(ColSpec(name="n", type=AnyType(), required=False))
    cols += [
        ColSpec(name="stream", type=DataType.boolean, required=False),
        ColSpec(name="top_p", type=AnyType(), required=False),
        ColSpec(name="top_k", type=AnyType(), required=False),
        ColSpec(name="seed", type=AnyType(), required=False),
    ]
    return cols


def _params_schema(task: str) -> Any:
    """The ``params`` schema of ``task``: :data:`CALL_PARAMS` (no ``n`` for text-generation), all unset by default."""
    from mlflow.types.schema import ParamSchema, ParamSpec

    kinds = {
        "max_tokens": "long",
        "temperature": "double",
        "top_p": "double",
        "top_k": "long",
        "n": "long",
        "seed": "long",
    }
    specs = [ParamSpec(name, kind, None) for name, kind in kinds.items() if task == CHAT or name != "n"]
    specs.append(ParamSpec("stop", "string", [], (-1,)))
    return ParamSchema(specs)


def standard_signature(task: str) -> ModelSignature | None:
    """The signature of a core task, or None when ``task`` is not one of :data:`TASKS`."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Object, Property, Schema

    if task == CHAT:
        # The message properties are MLflow's, typed Any: MLflow's string check fails on a lone
        # surrogate with pandas' error, and on deep nesting it overflows the stack while formatting its
        # own message, before flavorkit can name the field. flavorkit checks them (content a string).
        message = Object(
            [
                Property("role", AnyType()),
                Property("content", AnyType()),
                Property("name", AnyType(), required=False),
            ]
        )
        inputs = Schema(
            [
                ColSpec(name="messages", type=Array(message)),
                *_generation_columns(with_n=True),
                *_compat_columns(_CHAT_COMPAT),
            ]
        )
        outputs = Schema(
            [
                ColSpec(name="id", type=DataType.string),
                ColSpec(name="object", type=DataType.string),
                ColSpec(name="created", type=DataType.long),
                ColSpec(name="model", type=DataType.string),
                ColSpec(
                    name="choices",
                    type=Array(
                        Object(
                            [
                                Property("index", DataType.long),
                                Property(
                                    "message",
                                    Object(
                                        [
                                            Property("role", DataType.string),
                                            Property("content", DataType.string),
                                        ]
                                    ),
                                ),
                                Property("finish_reason", DataType.string),
                            ]
                        )
                    ),
                ),
                ColSpec(
                    name="usage",
                    type=Object(
                        [
                            Property("prompt_tokens", DataType.long),
                            Property("completion_tokens", DataType.long),
                            Property("total_tokens", DataType.long),
                        ]
                    ),
                ),
            ]
        )
        return ModelSignature(inputs=inputs, outputs=outputs, params=_params_schema(task))
    if task == TEXT:
        inputs = Schema(
            [
                ColSpec(name="prompt", type=DataType.string),
                *_generation_columns(with_n=False),
                *_compat_columns(_TEXT_COMPAT),
            ]
        )
        return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(DataType.string)]), params=_params_schema(task))
    return None


def input_example(task: str) -> dict[str, Any]:
    """A small valid request for ``task``, stored with the model as its input example."""
    if task == CHAT:
        return {
            "messages": [{"role": "user", "content": "What is the capital of Spain?"}],
            "max_tokens": 32,
            "temperature": 0.0,
        }
    return {"prompt": "What is the capital of Spain?", "max_tokens": 32, "temperature": 0.0}

"""Q5: does SmolLM2's chat template know tools / tool messages? What does a hermes (Qwen2.5-style) template render?

Run with either venv. Renders with transformers and with onnxruntime-genai's own template engine.
"""
from __future__ import annotations

import json
from pathlib import Path

import common
import onnxruntime_genai as og
import transformers
from q3_grammars import TOOLS
from transformers import AutoTokenizer

P = common.paths()

# A hermes / Qwen2.5-style template written for this prototype (same rendered format as Qwen2.5-Instruct:
# tools listed in the system turn inside <tools></tools>, assistant calls as <tool_call>\n{json}\n</tool_call>,
# tool results folded into a user turn inside <tool_response></tool_response>).
HERMES = r"""{%- if tools %}{{- '<|im_start|>system\n' }}{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tc in message.tool_calls or [] %}{%- set f = tc.function if tc.function is defined else tc %}
{{- '\n<tool_call>\n{"name": "' + f.name + '", "arguments": ' }}{%- if f.arguments is string %}{{- f.arguments }}{%- else %}{{- f.arguments | tojson }}{%- endif %}{{- '}\n</tool_call>' }}
{%- endfor %}{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

CONVO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 18}"},
]


def main() -> None:
    folder = Path(P["hf"])
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    jinja = folder / "chat_template.jinja"
    template = cfg.get("chat_template") or (jinja.read_text() if jinja.exists() else "")
    print(f"transformers {transformers.__version__} / onnxruntime-genai {og.__version__}")
    print(f"SmolLM2 template source: {'tokenizer_config.json' if cfg.get('chat_template') else jinja.name}; "
          f"mentions 'tools': {'tools' in template}; 'tool_calls': {'tool_calls' in template}")
    tok = AutoTokenizer.from_pretrained(folder)
    plain = tok.apply_chat_template(CONVO[:2], tokenize=False, add_generation_prompt=True)
    with_tools = tok.apply_chat_template(CONVO[:2], tools=TOOLS, tokenize=False, add_generation_prompt=True)
    print(f"HF render with tools= identical to without: {plain == with_tools} (tools silently dropped)")
    try:
        print("HF render of assistant tool_calls + tool message:\n" + tok.apply_chat_template(CONVO, tokenize=False))
    except Exception as e:  # noqa: BLE001
        print(f"HF render of assistant(content=None, tool_calls) fails: {type(e).__name__}: {e}")
    convo_str = [dict(m, content=m["content"] or "") for m in CONVO]
    print("HF render with content='' instead of None (tool_calls ignored, 'tool' role kept verbatim):\n"
          + tok.apply_chat_template(convo_str, tokenize=False))
    special = [t for t in tok.all_special_tokens]
    vocab = tok.get_vocab()
    print(f"SmolLM2 special tokens: {special}; '<tool_call>' in vocab: {'<tool_call>' in vocab}; "
          f"tokenizes to {len(tok.encode('<tool_call>', add_special_tokens=False))} tokens")

    # onnxruntime-genai's own template engine
    ogm = og.Model(P["ort"])
    ogt = og.Tokenizer(ogm)
    a = ogt.apply_chat_template(json.dumps(CONVO[:2]), add_generation_prompt=True)
    b = ogt.apply_chat_template(json.dumps(CONVO[:2]), tools=json.dumps(TOOLS), add_generation_prompt=True)
    print(f"og apply_chat_template(tools=...) identical to without: {a == b}")
    try:
        ogt.apply_chat_template(json.dumps(CONVO), add_generation_prompt=True)
        print("og render of content=None: OK")
    except Exception as e:  # noqa: BLE001
        print(f"og render of assistant(content=None): {type(e).__name__}: {str(e)[:120]}")

    print("\n== hermes (Qwen2.5-style) template, rendered by transformers ==")
    hf_h = tok.apply_chat_template(CONVO, tools=TOOLS, chat_template=HERMES, tokenize=False, add_generation_prompt=True)
    print(hf_h)
    try:
        og_h = ogt.apply_chat_template(json.dumps(CONVO), template_str=HERMES, tools=json.dumps(TOOLS), add_generation_prompt=True)
        print(f"og renders the same hermes template identically: {og_h == hf_h}")
        if og_h != hf_h:
            import difflib
            print("".join(list(difflib.unified_diff(hf_h.splitlines(True), og_h.splitlines(True), "hf", "og"))[:30]))
    except Exception as e:  # noqa: BLE001
        print(f"og template_str with tools: {type(e).__name__}: {str(e)[:200]}")


if __name__ == "__main__":
    main()

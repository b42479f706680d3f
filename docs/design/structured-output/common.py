"""Shared helpers for the g18 prototypes: model paths, prompts, schema, timing."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def paths() -> dict:
    """{'hf': checkpoint dir, 'ort': og int4 dir} for the running venv (cached per interpreter)."""
    key = HERE / f".paths-{Path(sys.prefix).name}.json"
    if key.exists():
        return json.loads(key.read_text())
    out = subprocess.run([sys.executable, str(HERE / "paths.py")], check=True, capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parents[3])).stdout.strip().splitlines()[-1]
    key.write_text(out)
    return json.loads(out)


#: nested object, array, enum, optional field (nickname), anyOf
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3},
        "role": {"enum": ["admin", "user", "guest"]},
        "nickname": {"type": "string", "maxLength": 20},
        "contact": {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}]},
    },
    "required": ["name", "age", "address", "hobbies", "role", "contact"],
    "additionalProperties": False,
}

#: same structure, no length caps: lets a small model ramble, to show what whitespace/length knobs do
SCHEMA_UNBOUNDED = json.loads(json.dumps(SCHEMA).replace('"maxLength": 40, ', "").replace(', "maxLength": 40', ""))

USER = ("Alice Smith is 34 years old and lives in Paris (zip 75001). She likes chess and tennis. "
        "She is an admin; email alice@example.com. Reply with a JSON object describing her.")

MESSAGES = [{"role": "user", "content": USER}]


def med(xs):
    return statistics.median(xs)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Timer:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t


def validate(text: str, schema: dict) -> str:
    import jsonschema
    try:
        obj = json.loads(text)
    except Exception as e:  # noqa: BLE001
        return f"NOT JSON ({e.__class__.__name__}: {e})"
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as e:
        return f"INVALID ({e.message} at {list(e.absolute_path)})"
    return "valid"

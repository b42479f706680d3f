"""Print (and cache) the SmolLM2 HF checkpoint and ORT int4 paths for the running venv."""
import os, sys, json
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from flavorkit.demo.smollm2 import checkpoint, ONNX_OPTIONS
from flavorkit_onnxgenai.convert import convert_checkpoint
hf = checkpoint()
ort = convert_checkpoint(hf, precision=str(ONNX_OPTIONS["precision"]), builder_options=dict(ONNX_OPTIONS["builder_options"]))
print(json.dumps({"hf": str(hf), "ort": str(ort)}))

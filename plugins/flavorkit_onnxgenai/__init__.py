"""First-party flavorkit backends over onnxruntime-genai (CPU, CUDA, DirectML).

Reached only through the ``flavorkit.backends`` entry points ``onnx-cpu``, ``onnx-cuda`` and
``onnx-dml``; see :mod:`flavorkit_onnxgenai.plugin`.
"""

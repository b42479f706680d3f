"""First-party flavorkit backends over Hugging Face runtimes: ``transformers`` and ``optimum-onnx``.

Reached only through the ``flavorkit.backends`` entry points; see
:mod:`flavorkit_hf.transformers_backend` and :mod:`flavorkit_hf.optimum_backend`. Both share one
decoding engine (:mod:`flavorkit_hf.engine`), since Optimum's ``ORTModelForCausalLM`` is called
exactly like a transformers causal LM.
"""

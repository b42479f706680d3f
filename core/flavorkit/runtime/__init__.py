"""Where a request flows: the loaded model, its choices, continuous batching, stop strings and the row step.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

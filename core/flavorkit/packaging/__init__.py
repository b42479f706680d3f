"""Where packaging happens: the packager, staging, model sources, builds, the cache and requirements.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

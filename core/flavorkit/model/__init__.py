"""What a packaged model is: its configuration, manifest, signature, URI, and how it is loaded.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

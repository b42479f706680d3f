"""Where a backend plugs in: the hook spec, entry-point discovery, the core defaults and handle forwarding.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

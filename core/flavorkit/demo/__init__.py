"""Demo code: the embedded SmolLM2-135M-Instruct model and ``flavorkit quickstart``.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`). Nothing in the core runtime imports
this package; the CLI imports :mod:`flavorkit.demo.quickstart` when ``flavorkit quickstart`` runs, and
tests and benchmarks use :mod:`flavorkit.demo.smollm2` for a real model. It is the one place (with the
conformance kit) where flavorkit names a backend.
"""

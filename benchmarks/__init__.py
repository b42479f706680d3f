"""flavorkit benchmarks (run with `make bench`)."""

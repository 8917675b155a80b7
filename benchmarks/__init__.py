"""Benchmarks (`make bench`, `make bench-inception`); not part of the `bnrepro` package."""

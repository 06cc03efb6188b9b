"""Benchmark programs: ``python -m benchmarks.<name>``. pytest never collects them."""

import relpsp  # noqa: F401  (first, so that its OpenMP setting precedes torch; see relpsp/__init__.py)

"""Benchmarks run by ``slas bench ...`` (figures, never timed tests)."""

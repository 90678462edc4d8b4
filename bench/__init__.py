"""Benchmarks: timings live here, never in the tests. See bench/README.md for the results."""

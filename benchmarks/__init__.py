"""Benchmarks: one script per figure (`bench_*.py`), run by `make bench` (benchmarks.run_all)."""

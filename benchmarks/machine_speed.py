"""A fixed reference workload timed once per `make bench` run, stored beside every figure it
measured: results.json keeps figures from different runs (`run_all NAME` reruns a subset), and
sessions land on machines that differ up to ~2x, so an absolute time (e2e_wall_s) is only
comparable with the reference seconds of the run that measured it.

The workload is what our benchmarks spend their time on at tiny sizes: small single-thread
GEMMs with an activation (torch's CPU kernels and dispatch) and plain Python loops.
"""

from __future__ import annotations

from benchmarks.harness import timed


def _once() -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g)
    w1, w2 = torch.randn(96, 384, generator=g), torch.randn(384, 96, generator=g)
    for _ in range(1500):
        x = torch.nn.functional.gelu(x @ w1) @ w2 * 0.05
    total = 0
    for i in range(1_500_000):
        total += i % 7
    if total < 0:  # keeps the loop from being treated as dead code by any future optimizer
        raise AssertionError


def reference_seconds(repeats: int = 5) -> float:
    """Median seconds of the reference workload on one thread (after one warm-up run)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        median, _ = timed(_once, repeats=repeats, warmup=1)
    finally:
        torch.set_num_threads(threads)
    return round(median, 4)

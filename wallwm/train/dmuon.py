"""Distributed Muon (DMuon): each Muon matrix has one owner rank.

Newton–Schulz costs O(m·n·min(m, n)) per matrix and would otherwise be repeated on every rank.
With world size R > 1 (and gradients already all-reduced, as DDP does), the matrices are split
across ranks by a deterministic greedy longest-processing-time (LPT) assignment on that cost; each
owner runs momentum + orthogonalization + the parameter update for its matrices only, then every
rank broadcasts its updated matrices as one flat buffer per (rank, dtype), so all ranks end the
step with bit-identical parameters. Momentum buffers exist only on the owner (1/R of the Muon
state per rank).

Checkpoints: `MuonAdamW.state_dict()` is a collective in distributed mode. Every rank must call it
(Lightning's `dump_checkpoint` does, before rank 0 writes); the owners broadcast their momentum
buffers so every rank returns the full, single-process-format state dict. `load_state_dict()`
takes that full dict on every rank and keeps only the owned buffers. Checkpoints are therefore
portable across world sizes (ownership is recomputed from shapes), at the cost of one transient
full copy of the Muon momentum during saving.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def ns_cost(shape: Sequence[int]) -> float:
    """Newton–Schulz flops up to a constant: the Gram matrix and its products are min(m,n)-sized."""
    m, n = int(shape[0]), int(shape[1])
    return float(m * n * min(m, n))


def lpt_partition(costs: Sequence[float], world_size: int) -> list[int]:
    """Owner rank per item: greedy LPT (largest cost first, to the least-loaded rank).

    Deterministic (ties: lower item index first, then lower rank), so every rank computes the same
    assignment without communicating. LPT is within 4/3 of the optimal makespan."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: must be >= 1")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    loads = [0.0] * world_size
    owner = [0] * len(costs)
    for i in order:
        r = min(range(world_size), key=lambda k: (loads[k], k))
        owner[i] = r
        loads[r] += costs[i]
    return owner


def partition_loads(costs: Sequence[float], owner: Sequence[int], world_size: int) -> list[float]:
    """Total cost per rank for an assignment."""
    loads = [0.0] * world_size
    for c, r in zip(costs, owner, strict=True):
        loads[r] += c
    return loads


def balance_ratio(loads: Sequence[float]) -> float:
    """max/min load (1.0 is perfect; inf when a rank has nothing)."""
    lo = min(loads)
    return float("inf") if lo == 0 else max(loads) / lo


def _global(group: dist.ProcessGroup | None, r: int) -> int:
    return r if group is None else dist.get_global_rank(group, r)


def _buckets(params: Sequence[Tensor], owner: Sequence[int], world_size: int
             ) -> list[tuple[int, list[Tensor]]]:
    """(owner rank, params) buckets, one per (rank, dtype, device), in a fixed order."""
    out: dict[tuple[int, torch.dtype, torch.device], list[Tensor]] = {}
    for p, r in zip(params, owner, strict=True):
        out.setdefault((r, p.dtype, p.device), []).append(p)
    return [(k[0], v) for k, v in sorted(out.items(), key=lambda kv: (kv[0][0], str(kv[0][1]),
                                                                       str(kv[0][2])))]


@torch.no_grad()
def broadcast_owned(params: Sequence[Tensor], owner: Sequence[int],
                    group: dist.ProcessGroup | None = None) -> None:
    """Every rank receives the owners' current values of `params` (one flat buffer per bucket)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    pending = []
    for r, ps in _buckets(params, owner, world):
        if r == rank:
            flat = torch.cat([p.detach().reshape(-1) for p in ps])
        else:
            flat = torch.empty(sum(p.numel() for p in ps), dtype=ps[0].dtype,
                               device=ps[0].device)
        work = dist.broadcast(flat, src=_global(group, r), group=group, async_op=True)
        pending.append((r, ps, flat, work))
    for r, ps, flat, work in pending:
        work.wait()
        if r != rank:
            off = 0
            for p in ps:
                p.copy_(flat[off:off + p.numel()].view_as(p))
                off += p.numel()


@torch.no_grad()
def gather_state(params: Sequence[Tensor], owner: Sequence[int], state: dict, key: str,
                 group: dist.ProcessGroup | None = None) -> dict[Tensor, Tensor]:
    """{param: state[param][key]} for all params on every rank, from the owners.

    Presence flags go first, so params the owner never stepped (no gradient yet) stay absent."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    out: dict[Tensor, Tensor] = {}
    for r, ps in _buckets(params, owner, world):
        src = _global(group, r)
        dev = ps[0].device
        if r == rank:
            flags = torch.tensor([key in state.get(p, {}) for p in ps], dtype=torch.uint8,
                                 device=dev)
        else:
            flags = torch.empty(len(ps), dtype=torch.uint8, device=dev)
        dist.broadcast(flags, src=src, group=group)
        present = [p for p, f in zip(ps, flags.tolist(), strict=True) if f]
        if not present:
            continue
        if r == rank:
            flat = torch.cat([state[p][key].reshape(-1) for p in present])
        else:
            flat = torch.empty(sum(p.numel() for p in present), dtype=ps[0].dtype, device=dev)
        dist.broadcast(flat, src=src, group=group)
        off = 0
        for p in present:
            out[p] = flat[off:off + p.numel()].view_as(p).clone()
            off += p.numel()
    return out


__all__ = ["balance_ratio", "broadcast_owned", "gather_state", "lpt_partition", "ns_cost",
           "partition_loads"]

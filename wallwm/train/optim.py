"""One optimizer object for the whole model: Muon on hidden matrices, AdamW on the rest.

Why one object: Lightning's automatic optimization handles exactly one optimizer per step; two
optimizers force manual optimization, and then `global_step` counts each optimizer's step
(PITFALLS "Torch, Lightning, Muon"). `MuonAdamW` holds both kinds of parameter group (tagged
`kind: "muon" | "adamw"`, each with its own `lr`), so one LR scheduler scales both and keeps their
ratio, and one `state_dict()` resumes both.

The updates are torch's own: the groups and the state are shared with an internal
`torch.optim.Muon` and `torch.optim.AdamW`, whose `step()` does the arithmetic, so the result is
exactly theirs. With `torch.distributed` initialized and world size > 1, the Muon part runs as
DMuon (`wallwm.train.dmuon`): each matrix is updated by its owner rank only and broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from wallwm.train import dmuon

ParamsOrGroups = Iterable[Tensor] | Iterable[dict[str, Any]]


def _groups(params: ParamsOrGroups) -> list[dict[str, Any]]:
    items = list(params)
    if not items:
        return []
    if isinstance(items[0], dict):
        return [dict(g) for g in items if list(g["params"])]
    return [{"params": items}]


class MuonAdamW(Optimizer):
    """Muon (momentum + Newton–Schulz orthogonalization) for `muon_params`, AdamW for
    `adamw_params`, as one `torch.optim.Optimizer`.

    Both arguments take tensors or param-group dicts (e.g. an AdamW group with
    `weight_decay=0` for norms and biases). Hyperparameters are those of `torch.optim.Muon` and
    `torch.optim.AdamW`; `adamw_weight_decay` defaults to `weight_decay`.

    `distributed`: None = DMuon whenever `torch.distributed` is initialized with world size > 1
    (decided at each step, so a process group created after the optimizer still counts); False =
    always the replicated single-process update; True = require a process group.
    Gradients must already be identical across ranks (DDP all-reduce) before `step()`.
    """

    def __init__(self, muon_params: ParamsOrGroups, adamw_params: ParamsOrGroups = (), *,
                 lr: float = 0.02, adamw_lr: float = 1e-3, weight_decay: float = 0.01,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, adamw_weight_decay: float | None = None,
                 distributed: bool | None = None,
                 process_group: dist.ProcessGroup | None = None) -> None:
        mg, ag = _groups(muon_params), _groups(adamw_params)
        if not mg and not ag:
            raise ValueError("MuonAdamW got no parameters")
        self._muon = torch.optim.Muon(
            mg, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn) if mg else None
        self._adamw = torch.optim.AdamW(
            ag, lr=adamw_lr, betas=betas, eps=eps,
            weight_decay=weight_decay if adamw_weight_decay is None else adamw_weight_decay,
        ) if ag else None
        groups: list[dict[str, Any]] = []
        for kind, inner in (("muon", self._muon), ("adamw", self._adamw)):
            for g in inner.param_groups if inner is not None else []:
                g["kind"] = kind
                groups.append(g)  # the same dicts: a scheduler's lr change reaches the inner step
        super().__init__(groups, defaults={})
        self.distributed = distributed
        self.process_group = process_group
        self._owner_cache: tuple[tuple[int, ...], list[int]] | None = None

    # ------------------------------------------------------------------ helpers
    def groups_of(self, kind: str) -> list[dict[str, Any]]:
        return [g for g in self.param_groups if g["kind"] == kind]

    def muon_params(self) -> list[Tensor]:
        return [p for g in self.groups_of("muon") for p in g["params"]]

    def _dist_active(self) -> bool:
        if self.distributed is False or self._muon is None:
            return False
        on = dist.is_available() and dist.is_initialized() and dist.get_world_size(
            self.process_group) > 1
        if self.distributed and not on:
            raise RuntimeError("MuonAdamW(distributed=True) needs an initialized process group "
                               "with world size > 1")
        return on

    def owners(self, world_size: int | None = None) -> list[int]:
        """Owner rank of each Muon matrix (order of `muon_params()`), by LPT on NS cost."""
        R = dist.get_world_size(self.process_group) if world_size is None else world_size
        key = (R, *(id(p) for p in self.muon_params()))
        if self._owner_cache is None or self._owner_cache[0] != key:
            costs = [dmuon.ns_cost(p.shape) for p in self.muon_params()]
            self._owner_cache = (key, dmuon.lpt_partition(costs, R))
        return self._owner_cache[1]

    def partition_report(self, world_size: int) -> dict[str, Any]:
        """Per-rank NS cost and the max/min ratio for `world_size` ranks (no process group)."""
        costs = [dmuon.ns_cost(p.shape) for p in self.muon_params()]
        loads = dmuon.partition_loads(costs, self.owners(world_size), world_size)
        return {"loads": loads, "max_min_ratio": dmuon.balance_ratio(loads),
                "matrices": len(costs)}

    def _sync_inner(self, muon_only_rank: int | None = None) -> None:
        """Point the inner optimizers at our (possibly reloaded) groups and state.

        `muon_only_rank`: show the inner Muon only the matrices that rank owns (DMuon)."""
        if self._muon is not None:
            groups = self.groups_of("muon")
            if muon_only_rank is not None:
                owner = dict(zip(map(id, self.muon_params()), self.owners(), strict=True))
                groups = [dict(g, params=[p for p in g["params"] if owner[id(p)] ==
                                          muon_only_rank]) for g in groups]
            self._muon.param_groups = groups
            self._muon.state = self.state
        if self._adamw is not None:
            self._adamw.param_groups = self.groups_of("adamw")
            self._adamw.state = self.state

    def _drop_unowned_muon_state(self) -> None:
        rank = dist.get_rank(self.process_group)
        for p, r in zip(self.muon_params(), self.owners(), strict=True):
            if r != rank:
                self.state.pop(p, None)

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step of both parts; the closure (Lightning's forward + backward) runs once."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._dist_active():
            rank = dist.get_rank(self.process_group)
            self._sync_inner(muon_only_rank=rank)
            self._muon.step()  # type: ignore[union-attr]
            dmuon.broadcast_owned(self.muon_params(), self.owners(), self.process_group)
        else:
            self._sync_inner()
            if self._muon is not None:
                self._muon.step()
        if self._adamw is not None:
            self._adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The full state in single-process format. Collective under DMuon: call on all ranks."""
        if not self._dist_active():
            return super().state_dict()
        full = dmuon.gather_state(self.muon_params(), self.owners(), self.state,
                                  "momentum_buffer", self.process_group)
        for p, buf in full.items():
            self.state.setdefault(p, {})["momentum_buffer"] = buf
        try:
            return super().state_dict()
        finally:
            self._drop_unowned_muon_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a full state dict (any world size); under DMuon keep only the owned buffers."""
        super().load_state_dict(state_dict)
        if self._dist_active():
            self._drop_unowned_muon_state()
        self._sync_inner()


def warmup_cosine(warmup_steps: int, max_steps: int, floor: float = 0.1) -> Callable[[int], float]:
    """LR factor: linear warm-up to 1 over `warmup_steps`, then cosine to `floor` at `max_steps`.

    The first step already has a non-zero lr (1/warmup), so no step is wasted."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, max_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _decay_split(params: Sequence[Tensor], weight_decay: float, kind: str
                 ) -> list[dict[str, Any]]:
    """Weight decay on matrices only: decaying norm gains and biases towards 0 only hurts."""
    mats = [p for p in params if p.ndim >= 2]
    vecs = [p for p in params if p.ndim < 2]
    return [g for g in ({"params": mats, "weight_decay": weight_decay, "kind": kind},
                        {"params": vecs, "weight_decay": 0.0, "kind": kind}) if g["params"]]


def make_optimizer(model: nn.Module, train: Any, params: Iterable[Tensor] | None = None,
                   **kw: Any) -> tuple[Optimizer, LambdaLR]:
    """(optimizer, per-step scheduler) from `params.train`.

    `optimizer: muon` -> `MuonAdamW` (Muon: the hidden matrices of `param_groups_for_muon` at
    `train.lr`; AdamW: the rest at `train.adamw_lr`); `optimizer: adamw` -> `torch.optim.AdamW` on
    everything at `train.adamw_lr` (the baseline). `params` restricts to a trainable subset (a
    curriculum stage). The scheduler is warm-up + cosine to 10 % on every group. `kw` goes to
    `MuonAdamW` (e.g. `distributed`, `momentum`); `train.muon_adjust_lr` picks Muon's lr
    scaling (`torch.optim.Muon`'s adjust_lr_fn: None/"original", or "match_rms_adamw", which
    scales the update to AdamW's RMS so one lr serves both)."""
    from wallwm.model.wallwm import param_groups_for_muon

    muon, adamw = param_groups_for_muon(model)
    if params is not None:
        keep = {id(p) for p in params}
        muon = [p for p in muon if id(p) in keep]
        adamw = [p for p in adamw if id(p) in keep]
    wd = float(train.weight_decay)
    opt: Optimizer
    if train.optimizer == "muon":
        kw.setdefault("adjust_lr_fn", getattr(train, "muon_adjust_lr", None))
        opt = MuonAdamW(muon, _decay_split(adamw, wd, "adamw"), lr=float(train.lr),
                        adamw_lr=float(train.adamw_lr), weight_decay=wd, **kw)
    elif train.optimizer == "adamw":
        opt = torch.optim.AdamW(_decay_split(muon + adamw, wd, "adamw"),
                                lr=float(train.adamw_lr), weight_decay=wd)
    else:
        raise ValueError(f"train.optimizer={train.optimizer!r}: use 'muon' or 'adamw'")
    sched = LambdaLR(opt, warmup_cosine(int(train.warmup_steps), int(train.max_steps)))
    return opt, sched


__all__ = ["MuonAdamW", "make_optimizer", "warmup_cosine"]

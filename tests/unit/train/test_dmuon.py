"""DMuon: LPT ownership, and 2 gloo processes under DDP give the single-process parameters."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from wallwm.train import dmuon
from wallwm.train.optim import MuonAdamW

STEPS = 4
SHAPES = [(64, 32), (32, 64), (48, 48), (96, 32), (32, 32), (40, 24), (24, 40), (64, 64)]


def test_lpt_is_deterministic_and_balanced() -> None:
    costs = [dmuon.ns_cost(s) for s in SHAPES]
    own = dmuon.lpt_partition(costs, 2)
    assert own == dmuon.lpt_partition(costs, 2)
    assert dmuon.lpt_partition([5.0, 5.0, 5.0], 2) == [0, 1, 0]  # ties: lower index, lower rank
    loads = dmuon.partition_loads(costs, own, 2)
    assert sum(loads) == pytest.approx(sum(costs))
    assert dmuon.balance_ratio(loads) < 1.2
    assert dmuon.lpt_partition(costs, 1) == [0] * len(costs)
    assert dmuon.balance_ratio([1.0, 0.0]) == float("inf")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 32)
        self.hidden = nn.ModuleList(nn.Linear(i, o) for o, i in SHAPES)  # weight (o, i)
        self.ins = nn.ModuleList(nn.Linear(32, i) for _, i in SHAPES)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(sum(o for o, _ in SHAPES), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.emb(x).mean(1))
        outs = [torch.tanh(lin(torch.tanh(inp(h)))) for lin, inp in zip(self.hidden, self.ins,
                                                                        strict=True)]
        return self.head(torch.cat(outs, -1))

    def split(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        mu = [m.weight for m in self.hidden] + [m.weight for m in self.ins]
        ids = {id(p) for p in mu}
        return mu, [p for p in self.parameters() if id(p) not in ids]


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randint(10, (16, 6), generator=g), torch.randn(16, 2, generator=g))
            for _ in range(STEPS)]


def _run(model: nn.Module, net: Net, opt: MuonAdamW) -> None:
    for x, y in _data():
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(0)
        net = Net()
        ddp = nn.parallel.DistributedDataParallel(net)  # all-reduces (averages) the gradients
        opt = MuonAdamW(*net.split(), lr=0.05, adamw_lr=3e-3, weight_decay=0.1)
        _run(ddp, net, opt)  # same data on every rank: the averaged gradient is the local one
        owned = sum("momentum_buffer" in opt.state[p] for p in opt.muon_params())
        sd = opt.state_dict()  # collective: full momentum on every rank
        assert sum("momentum_buffer" in opt.state[p] for p in opt.muon_params()) == owned
        fresh = MuonAdamW(*copy.deepcopy(net).split(), lr=0.05)
        fresh.load_state_dict(sd)
        kept = sum("momentum_buffer" in fresh.state[p] for p in fresh.muon_params())
        torch.save({"params": [p.detach() for p in net.parameters()], "owned": owned,
                    "kept": kept, "state": sd, "owners": opt.owners(),
                    "report": opt.partition_report(world)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_single_process(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the single-threaded workers
    try:
        torch.manual_seed(0)
        net = Net()
        opt = MuonAdamW(*net.split(), lr=0.05, adamw_lr=3e-3, weight_decay=0.1)
        _run(net, net, opt)
        ref_sd = opt.state_dict()
    finally:
        torch.set_num_threads(threads)

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    n_muon = len(opt.muon_params())
    for r in res:
        for p, q in zip(net.parameters(), r["params"], strict=True):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5)  # fp32 matmul blocking
        for i, st in ref_sd["state"].items():  # gathered state == single-process state
            for k, v in st.items():
                torch.testing.assert_close(r["state"]["state"][i][k], v, atol=1e-5, rtol=1e-5)
    assert [torch.equal(a, b) for a, b in zip(res[0]["params"], res[1]["params"],
                                              strict=True)] == [True] * len(res[0]["params"])
    own = res[0]["owners"]
    assert own == res[1]["owners"] and set(own) == {0, 1}
    assert [r["owned"] for r in res] == [own.count(0), own.count(1)]  # momentum only on owner
    assert sum(r["owned"] for r in res) == n_muon
    assert [r["kept"] for r in res] == [r["owned"] for r in res]
    ratio = res[0]["report"]["max_min_ratio"]
    print(f"DMuon 2 ranks: NS-cost loads {res[0]['report']['loads']}, max/min {ratio:.3f}")
    assert ratio < 1.2

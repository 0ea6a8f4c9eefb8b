"""MuonAdamW: exactly torch's Muon + AdamW in one object, scheduler, resume, Lightning steps."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from wallwm.train.optim import MuonAdamW, make_optimizer, warmup_cosine


class Tiny(nn.Module):
    """Embedding + hidden matrices of several shapes + norm + head: both kinds of parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 24)
        self.h1 = nn.Linear(24, 40)
        self.h2 = nn.Linear(40, 24, bias=False)
        self.h3 = nn.Linear(24, 24)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = self.h3(self.h2(torch.tanh(self.h1(h))) + h)
        return self.head(self.norm(h)).mean(1)

    def split(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        muon = [self.h1.weight, self.h2.weight, self.h3.weight]
        ids = {id(p) for p in muon}
        return muon, [p for p in self.parameters() if id(p) not in ids]


def _data(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(16, (8, 5), generator=g), torch.randn(8, 3, generator=g))
            for _ in range(n)]


def _loss(m: Tiny, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((m(x) - y) ** 2).mean()


def _train(m: Tiny, opt: torch.optim.Optimizer | list, data: list) -> None:
    opts = opt if isinstance(opt, list) else [opt]
    for x, y in data:
        for o in opts:
            o.zero_grad()
        _loss(m, x, y).backward()
        for o in opts:
            o.step()


def test_equals_torch_muon_and_adamw_exactly() -> None:
    torch.manual_seed(0)
    a = Tiny()
    b = copy.deepcopy(a)
    mu, ad = a.split()
    _train(a, MuonAdamW(mu, ad, lr=0.05, adamw_lr=3e-3, weight_decay=0.1), _data())
    mu, ad = b.split()
    ref = [torch.optim.Muon(mu, lr=0.05, weight_decay=0.1),
           torch.optim.AdamW(ad, lr=3e-3, weight_decay=0.1)]
    _train(b, ref, _data())
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), n


def test_groups_kinds_and_scheduler_keeps_ratio() -> None:
    m = Tiny()
    mu, ad = m.split()
    opt = MuonAdamW(mu, ad, lr=0.02, adamw_lr=1e-3)
    assert [g["kind"] for g in opt.param_groups] == ["muon", "adamw"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(2, 10))
    for x, y in _data(3):
        opt.zero_grad()
        _loss(m, x, y).backward()
        opt.step()
        sched.step()
        lm, la = (g["lr"] for g in opt.param_groups)
        assert lm / la == pytest.approx(20.0)
    assert opt._muon.param_groups[0] is opt.param_groups[0]  # the inner step sees the new lr


def test_warmup_cosine_shape() -> None:
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_state_dict_round_trip_resumes_identically() -> None:
    torch.manual_seed(1)
    a = Tiny()
    data = _data(6)
    opt = MuonAdamW(*a.split(), lr=0.05)
    _train(a, opt, data[:3])
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    b = Tiny()
    b.load_state_dict(ck["model"])
    opt_b = MuonAdamW(*b.split(), lr=0.05)
    opt_b.load_state_dict(ck["opt"])
    assert all("momentum_buffer" in opt_b.state[p] for p in b.split()[0])
    _train(a, opt, data[3:])
    _train(b, opt_b, data[3:])
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_closure_runs_once_and_returns_loss() -> None:
    m = Tiny()
    opt = MuonAdamW(*m.split())
    x, y = _data(1)[0]
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        opt.zero_grad()
        loss = _loss(m, x, y)
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure)) and len(calls) == 1


def test_rejects_non_matrix_for_muon() -> None:
    m = Tiny()
    with pytest.raises(ValueError, match="2D"):
        MuonAdamW([m.h1.bias], [m.head.weight])


def _wallwm():
    from wallwm.config import load_params
    from wallwm.model.config import WallWMConfig
    from wallwm.model.wallwm import WallWM

    p = load_params("params.yaml")
    return p, WallWM(WallWMConfig.from_params(p))


def test_make_optimizer_on_wallwm() -> None:
    from wallwm.model.wallwm import param_groups_for_muon

    p, model = _wallwm()
    opt, sched = make_optimizer(model, p.train.model_copy(update={"optimizer": "muon"}))
    assert isinstance(opt, MuonAdamW)
    muon, adamw = param_groups_for_muon(model)
    got = [q for g in opt.param_groups for q in g["params"]]
    assert len(got) == len({id(q) for q in got}) == len(muon) + len(adamw)
    assert {id(q) for q in opt.muon_params()} == {id(q) for q in muon}
    assert all(g["weight_decay"] == 0 for g in opt.param_groups
               if g["kind"] == "adamw" and g["params"][0].ndim < 2)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] == pytest.approx(p.train.lr / max(1, p.train.warmup_steps))
    base, _ = make_optimizer(model, p.train.model_copy(update={"optimizer": "adamw"}))
    assert type(base) is torch.optim.AdamW
    assert sum(len(g["params"]) for g in base.param_groups) == len(got)
    sub = list(model.action_parameters()) if hasattr(model, "action_parameters") else None
    if sub is not None:  # a curriculum stage: only the given parameters
        opt2, _ = make_optimizer(model, p.train, params=sub)
        ids = {id(q) for q in sub}
        assert all(id(q) in ids for g in opt2.param_groups for q in g["params"])


def test_a_stage_lr_factor_reaches_the_optimizer_of_that_stage_only() -> None:
    from wallwm.config import load_params
    from wallwm.train.loop import stage_params

    p, model = _wallwm()
    p = load_params("params.yaml", sets=["train.stage_lr={end_to_end: 0.25}",
                                         "train.stage_steps={end_to_end: 40}"])

    def peak(stage: str) -> dict[str, float]:  # each kind's lr at the end of warm-up
        opt, sched = make_optimizer(model, stage_params(p, stage).train)
        for _ in range(p.train.warmup_steps - 1):
            sched.step()
        return {g["kind"]: g["lr"] for g in opt.param_groups}

    full, e2e = peak("video"), peak("end_to_end")
    assert full == pytest.approx({"muon": p.train.lr, "adamw": p.train.adamw_lr})
    assert e2e == pytest.approx({k: 0.25 * v for k, v in full.items()})
    assert stage_params(p, "end_to_end").train.max_steps == 40


def test_lightning_counts_one_global_step_per_step(tmp_path) -> None:
    import lightning as L

    class Mod(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Tiny()
            self.steps = 0

        def training_step(self, batch, idx):
            return _loss(self.net, *batch)

        def configure_optimizers(self):
            opt = MuonAdamW(*self.net.split(), lr=0.02)
            opt.register_step_post_hook(lambda *_: setattr(self, "steps", self.steps + 1))
            return {"optimizer": opt, "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(1, 5)),
                "interval": "step"}}

    mod = Mod()
    before = [q.detach().clone() for q in mod.parameters()]
    tr = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path)
    dl = torch.utils.data.DataLoader([_data(1)[0]] * 8, batch_size=None)
    tr.fit(mod, train_dataloaders=dl)
    assert tr.global_step == 5 and mod.steps == 5
    assert all(not torch.equal(a, b) for a, b in zip(before, mod.parameters(), strict=True))

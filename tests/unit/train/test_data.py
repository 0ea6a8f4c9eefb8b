"""wallwm/train/data.py on a fresh 4-episode sim build: item and batch shapes for both modes,
event boundaries from annotations.jsonl, split disjointness, deterministic caption drop that
follows rho(L), a reproducible balanced order (also through a Lightning Trainer), and a real
forward pass of `WallWM` on collated batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wallwm.config import load_params
from wallwm.data.caption_drop import CaptionDropper
from wallwm.data.episode import CameraSpec
from wallwm.data.lerobot import LeRobotReader
from wallwm.data.tokenizer import load_tokenizer
from wallwm.model.batch import check_batch
from wallwm.model.config import WallWMConfig
from wallwm.model.wallwm import WallWM
from wallwm.train.data import (
    EventDataset,
    WallWMDataModule,
    collate_events,
    resolve_splits,
)

ROOT = Path(__file__).resolve().parents[3]
SETS = ["train.batch_size=4", "train.val_every=3"]


@pytest.fixture(scope="module")
def build(sim_build4) -> Path:
    return sim_build4


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml", sets=SETS)


@pytest.fixture(scope="module")
def cfg(params) -> WallWMConfig:
    return WallWMConfig.from_params(params)


@pytest.fixture(scope="module")
def tok(build):
    return load_tokenizer(build / "tokenizer.json")


def _ds(build, cfg, params, mode="event", split="train", drop=None) -> EventDataset:
    return EventDataset(build, split, cfg, mode=mode, caption_drop=drop,
                        vocabulary=params.data.annotate.vocabulary)


@pytest.mark.parametrize("mode", ["event", "unified"])
def test_batches_fit_the_model_and_give_finite_losses(build, cfg, params, tok, mode):
    ds = _ds(build, cfg, params, mode)
    items = [ds[i] for i in range(0, len(ds), max(1, len(ds) // 4))][:4]
    b = collate_events(items, tok, cfg)
    check_batch(b, cfg, need_targets=True, need_calibration=True)
    assert b.mode == mode and b.obs.shape == (len(items), cfg.views, 3, 64, 64)
    assert -1.0 <= float(b.obs.min()) and float(b.obs.max()) <= 1.0
    assert b.future.shape[2] == (1 if mode == "event" else cfg.frames)
    assert bool(b.calibrated.all())  # the sim cameras are calibrated (one of them moves)
    if mode == "unified":
        assert b.actions.shape[1] == cfg.action_horizon and b.cot_ids is not None
    torch.manual_seed(0)
    losses = WallWM(cfg)(b, generator=torch.Generator().manual_seed(0))
    assert all(bool(torch.isfinite(v)) for v in losses.values()), losses


def test_packed_batch_fits_the_model(build, cfg, params, tok):
    ds = _ds(build, cfg, params)
    items = [ds[i] for i in range(min(6, len(ds)))]
    b = collate_events(items, tok, cfg, pack=True)
    check_batch(b, cfg, need_targets=True, need_calibration=True)
    assert b.batch_size < len(items)  # several events share a row
    seg = b.segment_ids
    assert int((seg >= 0).sum()) == sum(int(it["actions"].shape[0]) for it in items)
    assert int(b.event_end.sum()) == sum(int(it["event_end"].sum()) for it in items)
    losses = WallWM(cfg)(b, generator=torch.Generator().manual_seed(0))
    assert all(bool(torch.isfinite(v)) for v in losses.values())


def test_event_items_follow_the_annotations(build, cfg, params):
    ds = _ds(build, cfg, params)
    rows = [json.loads(x) for x in
            (build / "t3_robot_real/sim/meta/annotations.jsonl").read_text().splitlines()]
    train_eps = {int(r.episode_index) for r in resolve_splits(build).itertuples()
                 if r.split == "train"}
    want = [(r["episode_index"], r["start"], r["end"], r["caption"]) for r in rows
            if r["level"] == "action" and r["end"] > r["start"] and r["episode_index"] in train_eps]
    got = [(r.episode, r.start, r.end, r.caption) for r in ds.refs]
    assert sorted(got) == sorted(want) and len(got) > 0
    ids = set(pd.read_parquet(build / "clusters/events.parquet").event_id)
    assert {r.event_id for r in ds.refs} <= ids  # event ids join the cluster table
    reader = LeRobotReader(build / "t3_robot_real/sim")
    vocab = list(params.data.annotate.vocabulary)
    for i in (0, len(ds) - 1):
        r, it = ds.refs[i], ds[i]
        t = reader.read_rows(r.episode).to_pandas()
        n = min(r.end - r.start, cfg.max_event_len)
        np.testing.assert_allclose(it["actions"].numpy(),
                                   np.stack(t["action"])[r.start:r.start + n])
        np.testing.assert_allclose(it["state"].numpy(), np.stack(t["observation.state"])[r.start])
        assert it["event_end"][-1] == 1 and it["event_end"].sum() == 1
        assert it["abs_time"] == pytest.approx(r.start / r.fps)
        assert it["event_type"] == (vocab.index(r.label) if r.label in vocab else -1)
        cam = sorted(reader.video_keys)[0]
        want_f = reader.decode_frames(cam, r.episode, [r.start, r.end - 1])
        want_f = torch.from_numpy(want_f).permute(0, 3, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(it["obs"][0], want_f[0])
        torch.testing.assert_close(it["future"][0, 0], want_f[1])
        # the moving wrist camera: its own pose at the observation and at the boundary frame
        poses = np.stack(t["observation.extrinsics.gripperPOV"])
        assert it["extrinsics"].shape == (2, 2, 4, 4)
        np.testing.assert_allclose(it["extrinsics"][1, 0].numpy(),
                                   poses[r.start].reshape(4, 4), rtol=1e-6)
        np.testing.assert_allclose(it["extrinsics"][1, 1].numpy(),
                                   poses[r.end - 1].reshape(4, 4), rtol=1e-6)
        assert not np.allclose(poses[r.start], poses[r.end - 1])  # it did move
        torch.testing.assert_close(it["extrinsics"][0, 0], it["extrinsics"][0, 1])  # fixed


def test_event_stride_adds_the_rest_of_each_event_from_inside_it(build, cfg, params):
    """train.event_stride: items at start, start + s, ... of every event; each one is the rest
    of the event from its frame (state, actions, obs and time there) with the event's own
    boundary frame, caption and end flag; the caption drop decides per event."""
    base = _ds(build, cfg, params)
    drop = CaptionDropper(0, 0.5, 0.5, 1, 2)
    ds = EventDataset(build, "train", cfg, mode="event", caption_drop=drop,
                      vocabulary=params.data.annotate.vocabulary, event_stride=3)
    starts = {(r.episode, r.start, r.end) for r in base.refs}
    assert {(r.episode, r.start, r.end) for r in ds.refs} == starts
    want = sorted((e, s, o) for e, s, end in starts for o in range(0, end - s, 3))
    assert sorted((r.episode, r.start, r.offset) for r in ds.refs) == want
    assert len(ds) > len(base)
    reader = LeRobotReader(build / "t3_robot_real/sim")
    cam = sorted(reader.video_keys)[0]
    r = max((r for r in ds.refs if r.offset > 0), key=lambda r: r.offset)
    i = ds.refs.index(r)
    it, first = ds[i], ds[ds.refs.index(next(x for x in ds.refs if x.event_id == r.event_id
                                             and x.offset == 0))]
    t0 = r.start + r.offset
    tab = reader.read_rows(r.episode).to_pandas()
    np.testing.assert_allclose(it["actions"].numpy(), np.stack(tab["action"])[t0:r.end])
    np.testing.assert_allclose(it["state"].numpy(), np.stack(tab["observation.state"])[t0])
    assert it["event_end"][-1] == 1 and it["event_end"].sum() == 1
    assert it["abs_time"] == pytest.approx(t0 / r.fps)
    f = torch.from_numpy(reader.decode_frames(cam, r.episode, [t0, r.end - 1]))
    f = f.permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(it["obs"][0], f[0])
    torch.testing.assert_close(it["future"][0, 0], f[1])  # the event's own boundary frame
    torch.testing.assert_close(it["future"], first["future"])
    assert it["caption_kept"] == first["caption_kept"]  # one drop decision per event
    assert (it["text"], it["event_type"]) == (first["text"], first["event_type"])
    with pytest.raises(ValueError, match="event_stride=-1"):
        EventDataset(build, "train", cfg, mode="event", event_stride=-1)


def test_the_data_module_strides_events_in_train_only(build):
    p = load_params(ROOT / "params.yaml", sets=[*SETS, "train.event_stride=2"])
    dm = WallWMDataModule(build, p)
    dm.setup()
    assert any(r.offset > 0 for r in dm.train_set.refs)
    assert all(r.offset == 0 for r in dm.val_set.refs)  # validation asks at event starts

    # the sampler draws events: an event's items share its probability, whatever their count
    s = dm.train_dataloader().sampler
    ev = np.array([r.event_id for r in dm.train_set.refs])
    per_event = {e: s.probs[ev == e].sum() for e in set(ev)}
    n_items = {e: int((ev == e).sum()) for e in set(ev)}
    assert max(n_items.values()) > 1
    clusters = dm.cluster_ids
    for e, pe in per_event.items():  # events of one cluster: equally likely
        same = [per_event[f] for f in per_event if clusters[ev == f][0] == clusters[ev == e][0]]
        assert pe == pytest.approx(same[0])
    unified = WallWMDataModule(build, p, mode="unified")
    unified.setup()
    assert unified.sampling_groups is None  # chunk mode draws frames


def test_unified_chunks_pad_at_the_episode_end_and_carry_cot(build, cfg, params):
    ds = _ds(build, cfg, params, "unified")
    last = max(range(len(ds)), key=lambda i: (ds.refs[i].episode, ds.refs[i].start))
    r, it = ds.refs[last], ds[last]
    assert r.start == r.length - 1
    assert int(it["action_mask"].sum()) == 1 and it["actions"].shape[0] == cfg.action_horizon
    assert it["text"] == r.task and it["cot"]
    r0 = ds.refs[0]
    anns = ds.anns[(r0.dataset, r0.episode)]
    cover = sorted((a for a in anns if a.level in ("subtask", "action")
                    and a.start < cfg.action_horizon), key=lambda a: (a.start, a.level != "subtask"))
    assert ds[0]["cot"] == "<sep>".join(a.caption for a in cover) and len(cover) >= 2


def test_splits_are_by_episode_and_disjoint(build, cfg, params, tmp_path):
    tr, va = _ds(build, cfg, params), _ds(build, cfg, params, split="val")
    assert set(tr.episode_keys).isdisjoint(va.episode_keys)
    eps = pd.read_parquet(build / "episodes.parquet")
    assert set(tr.episode_keys) | set(va.episode_keys) == set(eps.episode_key)
    assert len(va) > 0  # the build's val split is empty: a fixed hash-chosen share fills it
    assert _ds(build, cfg, params, split="val").episode_keys == va.episode_keys
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(build / "episodes.parquet", bad)
    k = eps.episode_key.iloc[0]
    (bad / "splits.json").write_text(json.dumps({"train": [k], "val": [k]}))
    with pytest.raises(ValueError, match="both train and val"):
        resolve_splits(bad)


def test_caption_drop_is_deterministic_per_epoch_and_follows_rho(build, cfg, params):
    cd = params.data.caption_drop
    drop = CaptionDropper(cd.seed, cd.lo, cd.hi, cd.short_frames, cd.long_frames)
    ds = _ds(build, cfg, params, drop=drop)
    a = [ds[(i, 3)]["text"] for i in range(len(ds))]
    assert a == [ds[(i, 3)]["text"] for i in range(len(ds))]
    kept = [ds[(i, 3)]["caption_kept"] for i in range(len(ds))]
    assert all((t == "") != k for t, k in zip(a, kept, strict=True))
    # over many epochs the kept share matches 1 - rho(L) of these events
    lengths = [r.end - r.start for r in ds.refs]
    epochs = range(400)
    keep = np.array([[drop.keep(r.event_id, n, e) for e in epochs]
                     for r, n in zip(ds.refs, lengths, strict=True)])
    want = 1 - np.array([drop.drop_prob(n) for n in lengths])
    assert abs(keep.mean() - want.mean()) < 0.03
    assert np.abs(keep.mean(1) - want).max() < 0.1
    assert (keep != keep[:, :1]).any()  # a new epoch draws afresh


def _batches(dm: WallWMDataModule, epoch: int, n: int = 2) -> list[torch.Tensor]:
    dl = dm.train_dataloader()
    dm.set_epoch(epoch)
    out = []
    for k, b in enumerate(dl):
        if k == n:
            break
        out.append(torch.cat([b.actions.flatten(), b.text_ids.flatten().float()]))
    return out


def test_train_order_is_reproducible(build, params):
    a, b = WallWMDataModule(build, params), WallWMDataModule(build, params)
    a.setup(), b.setup()
    ea, eb = _batches(a, 1), _batches(b, 1)
    assert all(torch.equal(x, y) for x, y in zip(ea, eb, strict=True))
    assert a.train_sampler.global_draw().tolist() != (
        a.train_sampler.set_epoch(2) or a.train_sampler.global_draw().tolist())
    assert len(a.train_dataloader()) == params.train.val_every
    val = next(iter(a.val_dataloader()))
    assert val.text_ids.shape[0] <= params.train.batch_size


def test_workers_see_the_same_batches(build, params):
    """Readers and the tokenizer reopen in a worker; the epoch travels with each index."""
    a, b = WallWMDataModule(build, params), WallWMDataModule(build, params, num_workers=1)
    ea, eb = _batches(a, 5), _batches(b, 5)
    assert all(torch.equal(x, y) for x, y in zip(ea, eb, strict=True))


def test_views_error_names_the_dataset_and_uncalibrated_cameras(build, params):
    cfg3 = WallWMConfig.from_params(params, views=3)
    ds = _ds(build, cfg3, params)
    with pytest.raises(ValueError, match="t3_robot_real/sim"):
        ds[0]
    cfg = WallWMConfig.from_params(params)
    ds = _ds(build, cfg, params)
    r = ds.refs[0]
    specs = ds.views(r.dataset)
    ds._views[r.dataset] = [CameraSpec(specs[0].key, 64, 64), specs[1]]
    k, e, cal = ds.cameras(r.dataset, r.episode, [r.start])
    assert cal.tolist() == [False, True]
    assert torch.equal(k[0], torch.eye(3)) and torch.equal(e[0, 0], torch.eye(4))


def test_lightning_sets_the_sampler_epoch(build, params):
    import lightning as L

    seen: list[tuple[int, int]] = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, i):
            seen.append((self.current_epoch, self.trainer.datamodule.train_sampler.epoch))
            return (self.w - batch.actions.mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def transfer_batch_to_device(self, batch, device, idx):
            return batch.to(device)

    dm = WallWMDataModule(build, params, batches_per_epoch=1)
    L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, limit_val_batches=0,
              enable_progress_bar=False, enable_model_summary=False,
              use_distributed_sampler=False).fit(Probe(), datamodule=dm)
    assert seen == [(0, 0), (1, 1)]

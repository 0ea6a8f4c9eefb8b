"""Offline evaluation on a real 4-episode sim build with a tiny untrained WALL-WM (fitted
normalization): figures per tier and per joint cluster that add up to the overall ones, cluster
sizes and order from the build, the predict-the-mean baseline against an independent
computation, the report files, the gate metric names, and the clear refusals."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import ROOT
from wallwm.config import load_params
from wallwm.eval.offline import (
    NO_CLUSTER,
    BuildNotFoundError,
    locate_build,
    offline_evaluation,
    offline_tables,
    write_evaluation_report,
    write_offline_plots,
)
from wallwm.model.config import WallWMConfig
from wallwm.model.normalize import NormalizationMissing
from wallwm.model.wallwm import WallWM
from wallwm.train.data import EventDataset, action_events, resolve_splits
from wallwm.train.stats import train_split_stats

STEPS = 2  # denoising steps: the figures are about bookkeeping, not quality


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    from tests.unit.build.test_bad_inputs import _build

    _, res = _build("sim:episodes=4", tmp_path_factory.mktemp("offline") / "b")
    return Path(res.path)


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def model(build, params) -> WallWM:
    cfg = WallWMConfig.from_params(params)
    torch.manual_seed(0)
    m = WallWM(cfg).eval()
    s = train_split_stats(build, cfg.action_dim, cfg.state_dim)
    m.norm.set_stats(s["action_mean"], s["action_std"], s["state_mean"], s["state_std"])
    return m


@pytest.fixture(scope="module")
def result(model, build, params):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return offline_evaluation(model, build, params.data.annotate.vocabulary, steps=STEPS,
                                  unified_stride=4, batch_size=4)
    finally:
        torch.set_num_threads(threads)


def _val_events(build: Path) -> pd.DataFrame:
    """clusters/events.parquet joined with each event's split (read independently)."""
    ev = pd.read_parquet(build / "clusters" / "events.parquet",
                         columns=["event_id", "label", "joint_cluster"])
    eps = resolve_splits(build)
    split = {f"{d}/{e}": s for d, e, s in zip(eps.dataset, eps.episode_index, eps.split,
                                               strict=True)}
    ev["split"] = [split[eid.rsplit("/", 1)[0]] for eid in ev.event_id]
    return ev


def test_cluster_rows_come_from_the_build_largest_first(result, build):
    ev = _val_events(build)
    r = result.modes["event"]
    train_sizes = Counter(ev.joint_cluster[ev.split == "train"])
    val_sizes = Counter(ev.joint_cluster[ev.split == "val"])
    by = {c["cluster"]: c for c in r.clusters}
    assert set(by) == set(ev.joint_cluster)  # every cluster listed, evaluated or not
    for c, row in by.items():
        assert row["events_train"] == train_sizes.get(c, 0)
        assert row["events_build"] == int((ev.joint_cluster == c).sum())
        assert row["items"] == val_sizes.get(c, 0)  # one event-mode item per val event
        top = Counter(ev.label[ev.joint_cluster == c]).most_common(1)[0][0]
        assert row["labels"].startswith(top)
    sizes = [c["events_train"] for c in r.clusters]
    assert sizes == sorted(sizes, reverse=True)  # the long tail at the bottom
    assert math.isclose(sum(c["train_share"] for c in r.clusters), 1.0)
    assert result.val_episodes == sorted(resolve_splits(build).query("split == 'val'")
                                         .episode_key)
    assert result.val_source.startswith("fallback")  # a 4-episode build has no val split


def test_unified_frames_take_the_cluster_of_their_event(result, build, params, model):
    ds = EventDataset(build, "val", model.cfg, mode="unified", unified_stride=4,
                      vocabulary=params.data.annotate.vocabulary)
    t = pd.read_parquet(build / "clusters" / "events.parquet")
    table = dict(zip(t.event_id, t.joint_cluster, strict=True))
    want: Counter = Counter()
    for r in ds.refs:
        evs = action_events(ds.anns[(r.dataset, r.episode)])
        j = [k for k, a in enumerate(evs) if a.start <= r.start < a.end]
        want[table[f"{r.dataset}/{r.episode}/{j[0]}"] if j else NO_CLUSTER] += 1
    got = {c["cluster"]: c["items"] for c in result.modes["unified"].clusters if c["items"]}
    assert got == {("none" if k == NO_CLUSTER else k): v for k, v in want.items()}
    assert result.modes["unified"].items == len(ds) == sum(want.values())


@pytest.mark.parametrize("mode", ["event", "unified"])
def test_group_figures_add_up_to_the_overall_ones(result, mode):
    r = result.modes[mode]
    o = r.overall
    for groups in (r.tiers, [c for c in r.clusters if c["items"]]):
        assert sum(g["items"] for g in groups) == r.items == o["items"]
        steps = sum(g["action_steps"] for g in groups)
        assert steps == o["action_steps"] > 0
        for k in ("action_mse", "mean_baseline_mse", "gripper_acc", "deploy_action_fm"):
            pooled = sum(g[k] * g["action_steps"] for g in groups) / steps
            assert pooled == pytest.approx(o[k], rel=1e-9), k
    assert o["action_mse_vs_mean_baseline"] == pytest.approx(
        o["action_mse"] / o["mean_baseline_mse"])
    assert o["psnr_gain_db"] == pytest.approx(o["frame_psnr"] - o["copy_obs_psnr"])
    assert ("end_abs_err_frames" in o) == (mode == "event")  # event end: event mode only
    assert [t["tier"] for t in r.tiers] == ["t3_robot_real"]


def test_mean_baseline_matches_an_independent_computation(result, build, params, model):
    """The predict-the-mean figure depends only on the data and the train statistics."""
    ds = EventDataset(build, "val", model.cfg, mode="event",
                      vocabulary=params.data.annotate.vocabulary)
    mu = model.norm.action_mean.numpy()
    sd = model.norm.action_std.numpy()
    acts = np.concatenate([ds[i]["actions"].numpy()[ds[i]["action_mask"].numpy()]
                           for i in range(len(ds))])
    want = float((((mu - acts) / sd) ** 2).mean())
    assert result.modes["event"].overall["mean_baseline_mse"] == pytest.approx(want, rel=1e-5)
    assert result.modes["event"].overall["action_steps"] == len(acts)


def test_the_same_model_gives_the_same_figures(result, model, build, params):
    again = offline_evaluation(model, build, params.data.annotate.vocabulary, steps=STEPS,
                               unified_stride=4, batch_size=4, modes=["event"])
    assert again.modes["event"].clusters == result.modes["event"].clusters
    assert model.training is False


def test_report_files_are_self_contained(result, tmp_path):
    from components.tracking.evaluation import offline_metrics

    plots = write_offline_plots(result, tmp_path / "plots")
    assert set(plots) == {"offline_tiers", "offline_event_clusters", "offline_unified_clusters"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.values())
    head = {k: v for k, v in offline_metrics(result, "event").items()
            if not k.startswith("offline.event.") and not k.startswith("offline.unified.")}
    assert set(head) == {"offline.action_mse", "offline.action_mse_vs_mean_baseline",
                         "offline.psnr_gain_db"}
    assert head["offline.action_mse"] == result.modes["event"].overall["action_mse"]
    paths = write_evaluation_report(tmp_path, title="t", meta={"model": "m"}, headline=head,
                                    offline=result,
                                    images=[(k, f"plots/{p.name}") for k, p in plots.items()])
    doc = paths["html"].read_text()
    assert doc.count("data:image/png;base64,") == 3 and 'src="plots/' not in doc
    assert "<script" not in doc and "per joint cluster" in doc
    md = paths["md"].read_text()
    assert "![offline_tiers](plots/offline_tiers.png)" in md
    m = json.loads(paths["metrics"].read_text())
    assert m["headline"] == head and m["closed_loop"] is None
    assert m["offline"]["modes"]["event"]["clusters"] == result.to_json()["modes"]["event"][
        "clusters"]
    caps = [c for c, _ in offline_tables(result)]
    assert caps[0].startswith("event mode: action MSE per dimension")


def test_closed_loop_gate_metrics_are_the_registry_names():
    from components.registry.evidence import EVAL_METRICS
    from components.tracking.evaluation import closed_loop_metrics, headline
    from wallwm.eval.episode import EpisodeResult
    from wallwm.eval.metrics import summarize, wilson

    def ep(policy, task, cond, i, ok, prog):
        return EpisodeResult(policy, task, cond, f"{task}/eval{i}", i, i, 2**32 + i, "x", ok,
                             ok, 10 if ok else None, 50, 13, 4, prog, 1, 3, [], None, 0.1)

    tasks = ["push-v3", "drawer-open-v3"]
    eps = [ep("model", t, c, i, ok, p) for t, oks in zip(tasks, [(1, 1, 0), (0, 0, 1)],
                                                          strict=True)
           for c in ("new_layout", "rephrased") for i, (ok, p) in enumerate(
               zip(oks, (1.0, 2 / 3, 1 / 3), strict=True))]
    eps += [ep("zero", t, "new_layout", i, False, 0.0) for t in tasks for i in range(3)]
    m = closed_loop_metrics(summarize(eps))
    assert set(EVAL_METRICS) - {"offline.action_mse"} <= set(m)
    assert m["closed_loop.success_rate"] == pytest.approx(3 / 6)  # mean over the two tasks
    lo, hi = wilson(3, 6)
    assert (m["closed_loop.success_ci_low"], m["closed_loop.success_ci_high"]) == (lo, hi)
    assert m["closed_loop.task_progress"] == pytest.approx(2 / 3)
    assert m["closed_loop.model.push.new_layout.success_rate"] == pytest.approx(2 / 3)
    assert m["closed_loop.model.drawer-open.rephrased.success_rate"] == pytest.approx(1 / 3)
    assert m["closed_loop.zero.all.new_layout.success_rate"] == 0.0
    assert list(headline(m))[:4] == ["closed_loop.success_rate", "closed_loop.success_ci_low",
                                     "closed_loop.success_ci_high",
                                     "closed_loop.task_progress"]


def test_locate_build_and_refusals(build, tmp_path, params):
    bid = json.loads((build / "manifest.json").read_text())["build_id"]
    other = tmp_path / "data"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"build_id": "feedbeef"}))
    assert locate_build(bid, [tmp_path / "nope", other, build]) == build.resolve()
    with pytest.raises(BuildNotFoundError) as e:
        locate_build(bid, [tmp_path / "nope", other])
    msg = str(e.value)
    assert bid in msg and "no manifest.json" in msg and "holds build feedbeef" in msg
    assert "wallwm data build" in msg
    cfg = WallWMConfig.from_params(params)
    with pytest.raises(NormalizationMissing):
        offline_evaluation(WallWM(cfg), build, params.data.annotate.vocabulary)
    with pytest.raises(ValueError, match="modes"):
        offline_evaluation(WallWM(cfg), build, [], modes=["chunky"])

"""The GX adapter: tier rules become suites, and every failure lands on exactly the bad episode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.validation import Failure, ValidationReport, validate_tables
from wallwm.data.episode import FLAG_KEYS, CameraSpec, Episode
from wallwm.data.tiers import probe

T = 8
K = np.array([[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]])


def _pose(shift: float) -> np.ndarray:
    m = np.eye(4)
    m[0, 3] = shift
    return m


def make_episode(i: int, tier: str = "t2_robot_public", *, state_dim: int = 4) -> Episode:
    """A tiny valid episode: distinct content per `i`, one camera (t2) or two calibrated (t3)."""
    rng = np.random.default_rng(i)
    names = ["top"] if tier == "t2_robot_public" else ["left", "right"]
    cams = {
        f"observation.images.{n}": CameraSpec(
            f"observation.images.{n}",
            8,
            8,
            intrinsics=K if tier == "t3_robot_real" else None,
            extrinsics=_pose(j * 0.1) if tier == "t3_robot_real" else None,
        )
        for j, n in enumerate(names)
    }
    features = {
        "observation.state": rng.normal(size=(T, state_dim)).astype(np.float32),
        "action": rng.normal(size=(T, 3)).astype(np.float32),
    }
    if tier == "t3_robot_real":
        features |= {k: np.zeros(T, bool) for k in FLAG_KEYS}
    return Episode(
        source="test",
        source_id=f"{tier}-{i}",
        tier=tier,
        task="pick up the cube",
        fps=10.0,
        timestamps=np.arange(T) / 10.0,
        features=features,
        videos={k: rng.integers(0, 255, (T, 8, 8, 3), dtype=np.uint8) for k in cams},
        cameras=cams,
    )


def tables(eps: dict[str, Episode]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, frames = zip(*(probe(e, k) for k, e in eps.items()), strict=True)
    return pd.DataFrame(list(rows)), pd.concat(frames, ignore_index=True)


def clean_set() -> dict[str, Episode]:
    eps = {f"t2-{i}": make_episode(i) for i in range(3)}
    eps |= {f"t3-{i}": make_episode(10 + i, "t3_robot_real") for i in range(2)}
    return eps


def _nan_action(e: Episode) -> None:
    e.features["action"][3, 1] = np.nan


def _inf_action(e: Episode) -> None:
    e.features["action"][5, 0] = np.inf


def _bad_timestamps(e: Episode) -> None:
    e.timestamps = e.timestamps.copy()
    e.timestamps[4] = e.timestamps[2]


def _bad_rotation(e: Episode) -> None:
    m = _pose(0.0)
    m[:3, :3] *= 1.5  # scaled, not a rotation
    e.cameras["observation.images.left"].extrinsics = m


def _short_video(e: Episode) -> None:
    e.videos["observation.images.top"] = e.videos["observation.images.top"][:-1]


def _no_action(e: Episode) -> None:
    del e.features["action"]


# key -> (tier, corruption, expected rule, expected GX expectation type)
BAD = {
    "nan_action": (
        "t2_robot_public",
        _nan_action,
        "frames.not_null:action[1]",
        "expect_column_values_to_not_be_null",
    ),
    "inf_action": (
        "t2_robot_public",
        _inf_action,
        "frames.not_null:action[0]",
        "expect_column_values_to_not_be_null",
    ),
    "bad_timestamps": (
        "t2_robot_public",
        _bad_timestamps,
        "episodes.in_set:timestamps_increasing",
        "expect_column_values_to_be_in_set",
    ),
    "bad_rotation": (
        "t3_robot_real",
        _bad_rotation,
        "episodes.between:rotation_orthonormal_error",
        "expect_column_values_to_be_between",
    ),
    "short_video": (
        "t2_robot_public",
        _short_video,
        "episodes.equal_columns:video_frames/observation.images.top=length",
        "expect_column_pair_values_to_be_equal",
    ),
    "no_action": (
        "t2_robot_public",
        _no_action,
        "episodes.in_set:has/action",
        "expect_column_values_to_be_in_set",
    ),
}


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> tuple[ValidationReport, dict[str, Episode], Path]:
    """One validation of a clean set plus one bad episode per defect (and a duplicate)."""
    eps = clean_set()
    for n, (key, (tier, corrupt, _, _)) in enumerate(BAD.items()):
        e = make_episode(100 + n, tier)
        corrupt(e)
        eps[key] = e
    dup = make_episode(0)  # same content as t2-0, another source id
    dup.source_id = "mirror-of-t2-0"
    eps["duplicate"] = dup
    build = tmp_path_factory.mktemp("build")
    ep_df, fr_df = tables(eps)
    return validate_tables(build, ep_df, fr_df), eps, build


def test_clean_set_passes(tmp_path):
    ep_df, fr_df = tables(clean_set())
    report = validate_tables(tmp_path, ep_df, fr_df)
    assert report.success, report.failures
    assert report.failures == [] and report.failed_episodes() == {}
    assert set(report.suites) == {
        f"{t}.{tab}" for t in ("t2_robot_public", "t3_robot_real") for tab in ("episodes", "frames")
    }
    for stats in report.suites.values():
        assert stats["success"] and stats["evaluated"] == stats["successful"] > 0
    assert report.data_docs and Path(report.data_docs).is_file()
    assert Path(report.data_docs).is_relative_to(tmp_path / "gx")


def test_failures_land_on_exactly_the_bad_episodes(dirty):
    report, eps, _ = dirty
    assert not report.success
    failed = report.failed_episodes()
    assert set(failed) == {*BAD, "duplicate"}  # clean ones and the first copy of t2-0 pass
    for key, (tier, _, rule, expectation) in BAD.items():
        hits = [f for f in failed[key] if f.rule == rule]
        assert hits, f"{key}: expected {rule}, got {[f.rule for f in failed[key]]}"
        assert hits[0].expectation == expectation and hits[0].tier == tier
        assert hits[0].suite.startswith(tier)
    assert any(s["unsuccessful"] for s in report.suites.values())


def test_failure_values_say_what_was_wrong(dirty):
    report, eps, _ = dirty
    first = {k: {x.rule: x for x in v} for k, v in report.failed_episodes().items()}
    nan = first["nan_action"]["frames.not_null:action[1]"]
    assert nan.value is None and nan.frame_index == 3 and nan.column == "action[1]"
    assert first["inf_action"]["frames.not_null:action[0]"].frame_index == 5
    assert first["bad_timestamps"]["episodes.in_set:timestamps_increasing"].value is False
    rot = first["bad_rotation"]["episodes.between:rotation_orthonormal_error"].value
    assert rot > 1e-3
    vid = first["short_video"]["episodes.equal_columns:video_frames/observation.images.top=length"]
    assert vid.value == [T - 1, T]
    assert first["no_action"]["episodes.in_set:has/action"].value is False
    dup = report.failed_episodes()["duplicate"]
    assert [x.rule for x in dup] == ["episodes.unique:content_sha256"]
    assert dup[0].value == probe(eps["t2-0"], "t2-0")[0]["content_sha256"]
    json.dumps([x.to_json() for x in report.failures])  # the manifest can hold them


def test_rerun_on_the_same_build_dir(dirty, tmp_path):
    report, eps, build = dirty
    ep_df, fr_df = tables({k: eps[k] for k in ("t2-0", "t2-1", "nan_action")})
    again = validate_tables(build, ep_df, fr_df, run_name="again")
    assert set(again.failed_episodes()) == {"nan_action"}
    assert set(again.suites) == {"t2_robot_public.episodes", "t2_robot_public.frames"}
    assert again.data_docs == report.data_docs and Path(again.data_docs).is_file()


def test_absent_column_fails_every_episode_of_the_tier(tmp_path):
    eps = clean_set()
    ep_df, fr_df = tables(eps)
    ep_df = ep_df.drop(columns=["has/action"])  # as if the probe never saw the feature
    report = validate_tables(tmp_path, ep_df, fr_df)
    failed = report.failed_episodes()
    assert set(failed) == set(ep_df["episode_key"])  # both tiers require `action`
    f: Failure = failed["t2-0"][0]
    assert f.expectation == "expect_column_to_exist" and f.rule == "episodes.in_set:has/action"
    assert f.column == "has/action"


def test_fewer_state_dimensions_is_not_a_nan(tmp_path):
    """Sources differ in state size; the concatenated table is NaN where a source has fewer."""
    eps = {"a": make_episode(1, state_dim=4), "b": make_episode(2, state_dim=6)}
    eps["c"] = make_episode(3, state_dim=6)
    eps["c"].features["observation.state"][:, 5] = np.nan  # not absence: NaN in every frame...
    eps["c"].features["observation.state"][0, 5] = 0.0  # ...but one: a real NaN defect
    report = validate_tables(tmp_path, *tables(eps))
    assert set(report.failed_episodes()) == {"c"}
    assert report.failures[0].rule == "frames.not_null:observation.state[5]"
    assert report.failures[0].frame_index == 1

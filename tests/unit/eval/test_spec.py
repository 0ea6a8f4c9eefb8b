"""A model whose cameras, image size, action/state dim, rate or embodiment do not fit the
environment is refused, with every mismatch named."""

from __future__ import annotations

import json

import pytest

from wallwm.eval.spec import (
    SIM_EMBODIMENT,
    EnvSpec,
    ModelContract,
    PolicyMismatchError,
    check_fit,
)
from wallwm.model.config import WallWMConfig

ENV = EnvSpec(("corner", "gripperPOV"), 64, 0.0125, 4)
GOOD = ModelContract(("corner", "gripperPOV"), 64, 4, 4, 20.0, SIM_EMBODIMENT,
                     ("reach", "grasp"))
CFG = WallWMConfig(views=2, action_dim=4, state_dim=4)


def test_a_fitting_model_passes():
    assert ENV.fps == pytest.approx(20.0)
    check_fit(GOOD, ENV, CFG)
    # the order of the model's views is its own; only the set must match
    check_fit(ModelContract(("gripperPOV", "corner"), 64, 4, 4, 20.0, SIM_EMBODIMENT), ENV)


@pytest.mark.parametrize(("change", "says"), [
    (dict(cameras=("corner", "topview")), "cameras: the model was trained on ['corner', "
                                          "'topview'], the environment renders"),
    (dict(image_size=96), "image size: the model was trained on 96x96 frames"),
    (dict(action_dim=7), "action dim: the model has 7, the environment 4"),
    (dict(state_dim=8), "state dim: the model has 8, the environment 4"),
    (dict(fps=10.0), "frame rate: the model was trained at 10 fps, the environment records "
                     "20 fps"),
    (dict(embodiment="franka"), "embodiment: the model was trained on robot_type 'franka'"),
])
def test_each_mismatch_is_refused_by_name(change, says):
    bad = ModelContract(**{**GOOD.__dict__, **change})
    with pytest.raises(PolicyMismatchError, match="does not fit") as e:
        check_fit(bad, ENV)
    assert says in str(e.value)


def test_network_must_match_its_contract_and_all_problems_are_listed():
    with pytest.raises(PolicyMismatchError) as e:
        check_fit(GOOD, ENV, WallWMConfig(views=3, action_dim=7, state_dim=4))
    msg = str(e.value)
    assert "model views: the network has 3, its contract 2" in msg
    assert "model action_dim: the network has 7, its contract 4" in msg
    bad = ModelContract(("corner",), 96, 7, 4, 20.0, "franka")
    with pytest.raises(PolicyMismatchError) as e:
        check_fit(bad, ENV)
    assert all(s in str(e.value) for s in ("cameras", "image size", "action dim", "embodiment"))


def test_contract_from_a_dataset_and_json_round_trip(tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    feats = {"observation.images.gripperPOV": {"dtype": "video", "shape": [64, 64, 3]},
             "observation.images.corner": {"dtype": "video", "shape": [64, 64, 3]},
             "observation.state": {"dtype": "float32", "shape": [4]},
             "action": {"dtype": "float32", "shape": [4]}}
    (meta / "info.json").write_text(json.dumps({"fps": 20, "robot_type": SIM_EMBODIMENT,
                                                "features": feats}))
    c = ModelContract.from_dataset(tmp_path, views=2, vocabulary=["reach"])
    assert c == ModelContract(("corner", "gripperPOV"), 64, 4, 4, 20.0, SIM_EMBODIMENT, ("reach",))
    assert ModelContract.from_json(json.loads(json.dumps(c.to_json()))) == c
    check_fit(c, ENV, CFG)
    with pytest.raises(PolicyMismatchError, match="2 camera"):
        ModelContract.from_dataset(tmp_path, views=3)
    with pytest.raises(FileNotFoundError, match="info.json"):
        ModelContract.from_dataset(tmp_path / "nope", views=2)

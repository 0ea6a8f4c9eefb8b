"""components.tracking.runs.git_state: a run is dirty when tracked code changed, not when the
data stage re-pinned `data.dvc` (a clean clone's `make run` does that before training)."""

from __future__ import annotations

import subprocess

from components.tracking.runs import git_revision, git_state


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_a_repinned_dvc_file_is_not_dirty_but_changed_code_is(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "data.dvc").write_text("outs:\n- md5: a69f.dir\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.dvc").write_text("outs: []\n")
    (tmp_path / "train.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sha, dirty = git_state(tmp_path)
    assert len(sha) == 40 and not dirty

    (tmp_path / "data.dvc").write_text("outs:\n- md5: 81ff.dir\n")  # the data stage's pin
    (tmp_path / "sub" / "more.dvc").write_text("outs: [x]\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_state(tmp_path) == (sha, False)
    assert git_revision(tmp_path) == sha

    (tmp_path / "train.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (sha, True)
    assert git_state(tmp_path / "sub") == (sha, True)  # from a subfolder: the whole checkout
    assert git_revision(tmp_path) == sha + "-dirty"


def test_outside_git_is_unknown_and_clean(tmp_path):
    assert git_state(tmp_path) == ("unknown", False)

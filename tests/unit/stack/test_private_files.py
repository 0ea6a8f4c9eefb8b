"""Secrets and the stack home are private from the first byte; DVC's secret stays off `ps`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from components.stack.home import credentials, private_dir, wallwm_home, write_private
from components.versioning import dvc as dvc_mod


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_home_is_made_0700_and_an_old_0755_one_is_narrowed(tmp_path, monkeypatch):
    monkeypatch.setenv("WALLWM_HOME", str(tmp_path / "new"))
    assert _mode(wallwm_home()) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    monkeypatch.setenv("WALLWM_HOME", str(old))
    assert _mode(wallwm_home()) == 0o700


def test_a_planted_link_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match="not a plain folder"):
        private_dir(tmp_path / "link")


def test_secrets_are_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)  # the widest: a write-then-chmod file would be created 0666
    try:
        write_private(tmp_path / "stack.env", "AWS_SECRET_ACCESS_KEY=x\n")
        key, secret = credentials(tmp_path)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "stack.env") == 0o600
    assert _mode(tmp_path / "s3-credentials") == 0o600
    assert credentials(tmp_path) == (key, secret)  # made once, then kept
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_key_creation_agrees_on_one_pair(tmp_path):
    code = ("import sys; from pathlib import Path; from components.stack.home import credentials;"
            "print(*credentials(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[3])
             for _ in range(4)]
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(outs) == 1 and outs == {" ".join(credentials(tmp_path))}


@pytest.fixture
def dvc_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
    return repo


def test_dvc_config_local_is_private_kept_and_read_by_dvc(dvc_repo, tmp_path, monkeypatch):
    local = dvc_repo / ".dvc" / "config.local"
    local.write_text("[core]\n    autostage = true\n")  # a user's own setting, 0644 as DVC makes
    local.chmod(0o644)
    argv: list[tuple[str, ...]] = []
    real = dvc_mod.run_dvc

    def spy(repo, *args, **kw):
        argv.append(args)
        return real(repo, *args, **kw)

    monkeypatch.setattr(dvc_mod, "run_dvc", spy)
    secret = "s3cr3t-" + os.urandom(8).hex()
    dvc_mod.configure_remotes(dvc_repo, tmp_path / "remote", "http://127.0.0.1:9055", "AKEY",
                              secret, "eu-west-1")
    assert _mode(local) == 0o600
    assert not [a for a in argv if any(secret in x for x in a)], argv  # never on a command line
    from dvc.config import Config

    conf = Config(dvc_dir=str(dvc_repo / ".dvc"))  # DVC's own reader (validates the schema)
    s3 = conf["remote"]["s3"]
    assert (s3["endpointurl"], s3["region"]) == ("http://127.0.0.1:9055", "eu-west-1")
    assert (s3["access_key_id"], s3["secret_access_key"]) == ("AKEY", secret)
    assert conf["remote"]["local"]["url"] == str(tmp_path / "remote")
    assert conf["core"]["autostage"] is True
    listed = real(dvc_repo, "remote", "list").stdout
    assert "s3" in listed and str(tmp_path / "remote") in listed

"""DVC through its CLI, one call at a time.

DVC's repository lock fails concurrent calls instead of waiting, so every call here takes a
process-wide file lock first. The `local` remote is a folder under the stack home; the `s3`
remote's endpoint and keys go to `.dvc/config.local` (never committed). That file holds the S3
secret, so it is written here, not with `dvc remote modify --local` (the secret would sit on a
command line any local user can read in `ps`): the same configobj format DVC 3 reads
(`dvc.config.Config.load_file`), replaced atomically by a file that is 0600 from creation.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml
from configobj import ConfigObj

from wallwm.util.atomic import atomic_write_text


class DvcError(RuntimeError):
    pass


def _dvc_bin() -> str:
    cand = Path(sys.executable).parent / "dvc"
    return str(cand) if cand.exists() else "dvc"


@contextlib.contextmanager
def _lock(repo: Path) -> Iterator[None]:
    path = repo / ".dvc" / "tmp" / "wallwm.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    with _lock(repo):
        proc = subprocess.run(
            [_dvc_bin(), *args], cwd=repo, capture_output=True, text=True, env=env
        )
    if check and proc.returncode != 0:
        raise DvcError(
            f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode}):\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def configure_remotes(repo: Path, local_dir: Path, s3_endpoint: str | None,
                      key: str | None = None, secret: str | None = None, region: str = "us-east-1",
                      bucket: str = "wallwm-dvc") -> None:
    """Make sure the `local` and `s3` remotes exist; point them at this machine's stack.

    The remotes' names and default URLs are committed in `.dvc/config`; where they lead on this
    machine (folder, endpoint, keys) goes to the uncommitted `.dvc/config.local`.
    """
    names = {ln.split()[0] for ln in run_dvc(repo, "remote", "list").stdout.splitlines() if ln.strip()}
    if "local" not in names:
        run_dvc(repo, "remote", "add", "-d", "local", str(local_dir))
    if "s3" not in names:
        run_dvc(repo, "remote", "add", "s3", f"s3://{bucket}/data")
    remotes: dict[str, dict[str, str]] = {"local": {"url": str(local_dir)}}
    if s3_endpoint:
        remotes["s3"] = {"endpointurl": s3_endpoint, "region": region}
        if key and secret:
            remotes["s3"].update(access_key_id=key, secret_access_key=secret)
    write_local_config(repo, remotes)


def write_local_config(repo: Path, remotes: dict[str, dict[str, str]]) -> Path:
    """Merge remote settings into `<repo>/.dvc/config.local` (other settings there are kept).

    Sections are DVC's `['remote "<name>"']`; the file is rewritten through a temp file created
    0600, so the secret is never readable by others, not even for a moment.
    """
    path = repo / ".dvc" / "config.local"
    with _lock(repo):
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        conf = ConfigObj(lines)
        for name, options in remotes.items():
            section = f'remote "{name}"'
            if section not in conf:
                conf[section] = {}
            conf[section].update(options)
        conf.indent_type = "    "  # as DVC writes its own config files
        atomic_write_text(path, "\n".join(conf.write()) + "\n", mode=0o600)  # mkstemp: 0600
    return path


def dvc_add(repo: Path, target: str) -> str:
    """`dvc add target` (writes `<target>.dvc`); returns the new md5."""
    run_dvc(repo, "add", target)
    return dvc_md5(repo, target)


def dvc_md5(repo: Path, target: str = "data") -> str:
    """The md5 recorded in `<target>.dvc` (what a training run names as its data version)."""
    path = repo / f"{target}.dvc"
    if not path.exists():
        raise DvcError(f"{path} does not exist; build a dataset first (`wallwm data build`)")
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    if not outs or "md5" not in outs[0]:
        raise DvcError(f"{path}: no `outs[0].md5`; the file is not a DVC pin")
    return outs[0]["md5"]


def dvc_push(repo: Path, remote: str, target: str = "data.dvc") -> str:
    return run_dvc(repo, "push", "-r", remote, target).stdout


def dvc_pull(repo: Path, remote: str, target: str = "data.dvc") -> str:
    return run_dvc(repo, "pull", "-r", remote, target).stdout

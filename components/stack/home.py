"""Where the stack keeps its state: `$WALLWM_HOME`, else `.wallwm/` in the project.

The home holds the S3 keys, the databases and every object, so it is private to its owner
(0700), and every secret in it is created 0600 from its first byte (never written, then chmod).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path

HOME_ENV = "WALLWM_HOME"


def project_root() -> Path:
    """The project checkout (the folder holding params.yaml and infra/)."""
    return Path(__file__).resolve().parents[2]


def private_dir(path: Path, must_own: bool = False) -> Path:
    """`path` as a folder only its owner can enter (0700); an existing wider one is narrowed.

    A symlink or a file in its place is refused (a planted link would redirect our data), and
    with `must_own` (folders in a shared place such as /tmp) so is one owned by another user.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{path} is not a plain folder; remove it so it can be made 0700")
    if must_own and st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to you; remove it")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def wallwm_home() -> Path:
    return private_dir(Path(os.environ.get(HOME_ENV) or project_root() / ".wallwm").resolve())


def stack_id(home: Path) -> str:
    """A marker every process we start carries in its environment, so `down` finds only ours."""
    return hashlib.sha256(str(home).encode()).hexdigest()[:16]


def private_temp(path: Path, text: str) -> Path:
    """A new file beside `path`, created 0600 (O_EXCL: never someone else's), holding `text`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def write_private(path: Path, text: str) -> None:
    """Atomically replace `path` with `text`, readable by its owner only (0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_temp(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def credentials(home: Path) -> tuple[str, str]:
    """The local S3 server's key pair, made once and kept (0600) so clients keep working.

    The first writer wins (`link` fails if the file exists), so two processes making the keys at
    once still agree on one pair.
    """
    path = home / "s3-credentials"
    if not path.exists():
        key, secret = "wallwm" + secrets.token_hex(6), secrets.token_urlsafe(30)
        tmp = private_temp(path, f"{key}\n{secret}\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    parts = path.read_text().split()
    if len(parts) < 2:
        raise RuntimeError(
            f"{path} holds no key pair (expected two lines: access key, secret key); delete it "
            f"and run `wallwm stack down` then `wallwm stack up` to make a new pair"
        )
    return parts[0], parts[1]

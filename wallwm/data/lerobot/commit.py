"""The commit protocol that makes one episode append all-or-nothing.

Every file an episode touches is written complete under a temp name (``<final>.commit-tmp``,
a suffix no LeRobot glob matches); then ``meta/.commit.json`` (atomic) lists the renames; then
the renames run; then the journal goes. On open, :func:`recover` rolls a journal forward (the
episode was fully written) or, with no journal, deletes stray temp files (it was not).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from wallwm.util.atomic import atomic_write_text

JOURNAL = "meta/.commit.json"
TMP_SUFFIX = ".commit-tmp"


def tmp_for(final: Path) -> Path:
    return final.with_name(final.name + TMP_SUFFIX)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(root: Path, pairs: list[tuple[Path, Path]]) -> None:
    """Publish temp files: journal first, then renames, then drop the journal."""
    for tmp, _ in pairs:
        _fsync(tmp)
    body = {"renames": [[str(t.relative_to(root)), str(f.relative_to(root))] for t, f in pairs]}
    atomic_write_text(root / JOURNAL, json.dumps(body, ensure_ascii=False))
    _apply(root, body)


def _apply(root: Path, body: dict) -> None:
    for tmp, final in body["renames"]:
        src, dst = root / tmp, root / final
        if src.exists():  # absent = already renamed before a crash
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    (root / JOURNAL).unlink(missing_ok=True)


def recover(root: Path) -> str:
    """Finish or undo an interrupted commit. Returns "rolled_forward", "cleaned" or "clean"."""
    journal = root / JOURNAL
    state = "clean"
    if journal.exists():
        try:
            body = json.loads(journal.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{journal}: unreadable commit journal ({e}); inspect by hand") from e
        _apply(root, body)
        state = "rolled_forward"
    for stray in root.rglob("*" + TMP_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            stray.unlink()
        state = "cleaned" if state == "clean" else state
    return state


def discard(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()

"""Signing keys of the release repository: which role holds which key, where it lives.

The key folder keeps the offline roles (root, targets) apart from the online ones
(snapshot, timestamp, director), so the publishing service can be handed `online/` alone:

```
<keys>/keys.json           roles -> threshold + [{uri, public key}]      (0600)
<keys>/offline/<role>-<id>.pem   root and targets private keys (PKCS#8)  (0600, folder 0700)
<keys>/online/<role>-<id>.pem    snapshot, timestamp, director keys      (0600, folder 0700)
<keys>/retired/                  keys rotated out (kept for audit)       (0700)
```

A key is named by a securesystemslib signer URI: `file2:offline/root-ab12cd34.pem` (relative
to the folder) for the local default, or a KMS/HSM URI (`awskms:...`, `gcpkms:...`,
`azurekms:...`, `hsm:`) with its public key imported; signing then happens in the KMS and
no private key touches this machine. Rotation (README, "Release and robots") swaps keys role
by role through a new root version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from wallwm.util.atomic import atomic_write_bytes, atomic_write_text

OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp", "director")
TUF_ROLES = ("root", "targets", "snapshot", "timestamp")
KEYS_FILE = "keys.json"


class KeyFileError(RuntimeError):
    """Missing, unreadable or mis-permissioned key material; the message names the file."""


def _folder(role: str) -> str:
    return "offline" if role in OFFLINE_ROLES else "online"


def _private_dir(root: Path, sub: str) -> Path:
    d = root / sub
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def write_private_key(path: Path, signer: CryptoSigner) -> None:
    """PEM (PKCS#8) with mode 0600 from the first byte on (atomic, never world-readable)."""
    atomic_write_bytes(path, signer.private_bytes, mode=0o600)


def generate_file_key(root: Path, role: str) -> tuple[str, SSlibKey]:
    """A new ed25519 key for `role` under root/<offline|online>/; returns (uri, public key)."""
    signer = CryptoSigner.generate_ed25519()
    d = _private_dir(root, _folder(role))
    name = f"{role}-{signer.public_key.keyid[:12]}.pem"
    write_private_key(d / name, signer)
    return f"file2:{_folder(role)}/{name}", signer.public_key


@dataclass
class RoleKeys:
    threshold: int
    keys: list[dict[str, Any]] = field(default_factory=list)  # {"uri", "public": {...}}

    def public_keys(self) -> list[SSlibKey]:
        return [SSlibKey.from_dict(k["public"]["keyid"], dict(k["public"]["key"]))
                for k in self.keys]


class KeyRing:
    """The key folder: public keys and signer URIs per role, and loading of signers."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.roles: dict[str, RoleKeys] = {}
        # a rotation in progress: role -> {"old": entries, "old_root": entries}; kept until
        # every channel carries the new root, so an interrupted rotation can be finished
        self.pending: dict[str, dict[str, list[dict[str, Any]]]] = {}
        path = self.root / KEYS_FILE
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.roles = {r: RoleKeys(int(v["threshold"]), list(v["keys"]))
                              for r, v in raw["roles"].items()}
                self.pending = dict(raw.get("pending", {}))
            except (ValueError, KeyError, TypeError) as e:
                raise KeyFileError(f"{path}: unreadable key index ({e}); restore it from backup") \
                    from e

    @classmethod
    def create(cls, root: Path | str, root_keys: int = 2, root_threshold: int = 2,
               targets_keys: int = 1, targets_threshold: int = 1) -> KeyRing:
        """Generate file keys for every role (root `root_threshold`-of-`root_keys`)."""
        ring = cls(root)
        if ring.roles:
            raise KeyFileError(f"{ring.root / KEYS_FILE} exists; keys are made once (rotate instead)")
        if not 1 <= root_threshold <= root_keys or not 1 <= targets_threshold <= targets_keys:
            raise KeyFileError(f"thresholds must be between 1 and the key count (root "
                            f"{root_threshold}/{root_keys}, targets "
                            f"{targets_threshold}/{targets_keys})")
        ring.root.mkdir(parents=True, exist_ok=True)
        os.chmod(ring.root, 0o700)
        counts = {"root": (root_keys, root_threshold), "targets": (targets_keys,
                                                                  targets_threshold)}
        for role in (*TUF_ROLES, "director"):
            n, thr = counts.get(role, (1, 1))
            ring.roles[role] = RoleKeys(thr, [])
            for _ in range(n):
                uri, pub = generate_file_key(ring.root, role)
                ring.roles[role].keys.append({"uri": uri, "public": _pub_json(pub)})
        ring.save()
        return ring

    def save(self) -> None:
        data = {"roles": {r: {"threshold": v.threshold, "keys": v.keys}
                          for r, v in self.roles.items()}, "pending": self.pending}
        atomic_write_text(self.root / KEYS_FILE, json.dumps(data, indent=2) + "\n", mode=0o600)

    def role(self, role: str) -> RoleKeys:
        if role not in self.roles:
            raise KeyFileError(f"{self.root / KEYS_FILE}: no keys for role {role!r}; run "
                            "`wallwm release keys init` first")
        return self.roles[role]

    def signers(self, role: str) -> list[Signer]:
        """Every signer of `role` whose private key is reachable here (>= threshold)."""
        rk = self.role(role)
        out = []
        for entry in rk.keys:
            out.append(self.load_signer(entry))
        if len(out) < rk.threshold:
            raise KeyFileError(f"role {role}: {len(out)} signer(s), threshold {rk.threshold}")
        return out

    def load_signer(self, entry: dict[str, Any]) -> Signer:
        pub = SSlibKey.from_dict(entry["public"]["keyid"], dict(entry["public"]["key"]))
        uri: str = entry["uri"]
        if uri.startswith("file2:") and not uri[6:].startswith("/"):
            path = self.root / uri[6:]
            check_private_file(path)
            uri = f"file2:{path}"
        elif uri.startswith("file2:"):
            check_private_file(Path(uri[6:]))
        try:
            return Signer.from_priv_key_uri(uri, pub)
        except (OSError, ValueError) as e:
            raise KeyFileError(f"cannot load signer {entry['uri']} ({e})") from e

    def replace(self, role: str, new: list[tuple[str, Key]], threshold: int) -> list[dict]:
        """Swap the keys of `role`; returns the old entries (their files go to retired/)."""
        if not 1 <= threshold <= len(new):
            raise KeyFileError(f"threshold {threshold} for {len(new)} new key(s) of role {role}")
        old = self.role(role).keys if role in self.roles else []
        self.roles[role] = RoleKeys(threshold, [{"uri": u, "public": _pub_json(k)}
                                                for u, k in new])
        return old

    def retire(self, entries: list[dict]) -> None:
        d = _private_dir(self.root, "retired")
        for e in entries:
            uri = e["uri"]
            if uri.startswith("file2:") and not uri[6:].startswith("/"):
                src = self.root / uri[6:]
                if src.exists():
                    os.replace(src, d / src.name)


def _pub_json(key: Key) -> dict[str, Any]:
    return {"keyid": key.keyid, "key": key.to_dict()}


def check_private_file(path: Path) -> None:
    """A private key file must exist and be readable by its owner only."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as e:
        raise KeyFileError(f"{path}: private key missing ({e.strerror})") from e
    if mode & 0o077:
        raise KeyFileError(f"{path}: mode {oct(mode)} lets others read a private key; "
                        f"run chmod 600 {path}")


def public_key_from_json(data: dict[str, Any] | str) -> SSlibKey:
    """{"keyid": .., "key": {...}} as written by `public_key_json`."""
    d = json.loads(data) if isinstance(data, str) else data
    return SSlibKey.from_dict(d["keyid"], dict(d["key"]))


def public_key_json(key: Key) -> str:
    return json.dumps(_pub_json(key), indent=2, sort_keys=True) + "\n"


def load_or_create_device_key(path: Path | str) -> CryptoSigner:
    """A robot's own ed25519 key (made on first start, 0600); signs its status reports."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        signer = CryptoSigner.generate_ed25519()
        write_private_key(path, signer)
        return signer
    check_private_file(path)
    return CryptoSigner(load_pem_private_key(path.read_bytes(), None))

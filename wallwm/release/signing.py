"""Signed JSON documents (DSSE envelopes) outside TUF: assignments, status reports, inbox entries.

The signature covers the exact payload bytes (DSSE pre-authentication encoding), so nothing
depends on re-serialising JSON the same way on both sides, and the payload type is signed too:
a status report can never be replayed as an assignment.
"""

from __future__ import annotations

import json
from typing import Any

from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Key, Signer

ASSIGNMENT = "application/vnd.wallwm.assignment+json"
REPORT = "application/vnd.wallwm.status-report+json"
INBOX_ENTRY = "application/vnd.wallwm.inbox-entry+json"


class SignatureError(ValueError):
    """A document whose signature, type or content cannot be trusted."""


def sign_document(body: dict[str, Any], payload_type: str, signers: list[Signer]) -> bytes:
    """The DSSE envelope of `body`, signed by every signer, as JSON bytes."""
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    env = Envelope(payload, payload_type, {})
    for s in signers:
        env.sign(s)
    return json.dumps(env.to_dict(), indent=1).encode()


def verify_document(raw: bytes, payload_type: str, keys: list[Key], threshold: int = 1,
                    source: str = "document") -> dict[str, Any]:
    """The body of a DSSE envelope signed by `threshold` of `keys` with the right type."""
    try:
        env = Envelope.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as e:
        raise SignatureError(f"{source}: not a DSSE envelope ({e})") from e
    if env.payload_type != payload_type:
        raise SignatureError(f"{source}: payloadType {env.payload_type!r}, expected "
                             f"{payload_type!r}")
    if not keys:
        raise SignatureError(f"{source}: no trusted key to verify it with")
    try:
        env.verify(keys, threshold)
    except (VerificationError, ValueError) as e:
        raise SignatureError(f"{source}: signature not trusted ({e})") from e
    try:
        body = json.loads(env.payload)
    except ValueError as e:
        raise SignatureError(f"{source}: signed payload is not JSON ({e})") from e
    if not isinstance(body, dict):
        raise SignatureError(f"{source}: signed payload is not an object")
    return body


def peek_document(raw: bytes) -> dict[str, Any]:
    """The unverified body (for display only; never act on it)."""
    env = Envelope.from_dict(json.loads(raw))
    return json.loads(env.payload)

"""A ticket lock on MLflow's own state, so promotions of one release model take turns.

MLflow has no compare-and-set, but it has one atomic counter: model version numbers. Creating a
version computes `max(version) + 1` and inserts it in one transaction, with (name, version) as
the primary key, and retries on a collision; the same transaction updates the registered
model's row, so a second creator waits for the first to commit. A version number N is
therefore visible only once every number below it is committed and visible.

Each `wallwm promote` attempt takes a ticket: a new version of `<release>-promotion-queue`
(tags: state, user, attempt id, candidate), then waits until no lower ticket is live. The
lowest live ticket holds the lock (a ticket lock, as a bakery with a central counter); at most
one holder exists because every waiter sees every lower ticket. Releasing sets state=done.

Crashes: a holder older than `registry.lock_lease_s` (since `held_since`), or a waiter older
than lease + wait, counts as abandoned; the next waiter marks it so. A holder checks
`still_held` right before it moves `champion`, so a holder that overran its lease aborts rather
than race its successor. Times are client clocks against each other and against the server's
creation timestamps: keep clocks in sync well within the lease (NTP), as on one machine.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass

from components.registry.errors import RegistryError

STATE = "wallwm.lock.state"
USER = "wallwm.lock.user"
ATTEMPT = "wallwm.lock.attempt"
CANDIDATE = "wallwm.lock.candidate"
HELD_SINCE = "wallwm.lock.held_since_ms"
OUTCOME = "wallwm.lock.outcome"
RELEASED = "wallwm.lock.released_ms"
LIVE = ("waiting", "holding")


@dataclass(frozen=True)
class Ticket:
    queue: str
    number: int
    attempt: str
    created_ms: int


def _now_ms() -> int:
    return int(time.time() * 1000)


class PromotionLock:
    def __init__(self, client, queue: str, *, lease_s: float, wait_s: float,
                 poll_s: float = 0.5):
        self.client, self.queue = client, queue
        self.lease_ms, self.wait_ms, self.poll_s = lease_s * 1000, wait_s * 1000, poll_s

    def _forbidden(self, e: Exception, user: str) -> RegistryError:
        return RegistryError("server_permission", f"the server refused {user!r} a ticket in "
                             f"{self.queue} ({str(e)[:160]}); promotions need EDIT on the release "
                             "model's queue (reviewers and the promoter)")

    def acquire(self, user: str, candidate: str) -> Ticket:
        attempt = uuid.uuid4().hex
        try:
            mv = self.client.create_model_version(
                self.queue, source=f"models:/{candidate}", await_creation_for=0,
                tags={STATE: "waiting", USER: user, ATTEMPT: attempt, CANDIDATE: candidate},
                description=f"promotion ticket of {user} for {candidate} (a lock, not a model)")
        except Exception as e:
            if "PERMISSION_DENIED" in f"{getattr(e, 'error_code', '')} {e}" or "403" in str(e):
                raise self._forbidden(e, user) from None
            raise
        t = Ticket(self.queue, int(mv.version), attempt, int(mv.creation_timestamp))
        deadline = _now_ms() + self.wait_ms
        while True:
            blockers = self._blockers(t)
            if not blockers:
                self._tag(t, STATE, "holding")
                self._tag(t, HELD_SINCE, str(_now_ms()))
                return t
            if _now_ms() > deadline:
                self.release(t, "gave up waiting")
                b = blockers[0]
                raise RegistryError("promotion_lock", f"waited {self.wait_ms / 1000:g}s behind "
                                    f"ticket {b.version} of {b.tags.get(USER)} for "
                                    f"{b.tags.get(CANDIDATE)} ({b.tags.get(STATE)}); try again, "
                                    f"or raise registry.lock_wait_s")
            time.sleep(self.poll_s * (0.5 + random.random()))

    def _blockers(self, t: Ticket) -> list:
        """Live tickets below `t`, after marking the abandoned ones."""
        out = []
        for mv in self.client.search_model_versions(
                f"name='{self.queue}' and tags.`{STATE}` != 'done'", max_results=10000):
            n, tags = int(mv.version), mv.tags or {}
            if n >= t.number or tags.get(STATE) not in LIVE:
                continue
            now = _now_ms()
            if tags.get(STATE) == "holding":
                stale = now - int(tags.get(HELD_SINCE) or mv.creation_timestamp) > self.lease_ms
            else:
                stale = now - int(mv.creation_timestamp) > self.lease_ms + self.wait_ms
            if stale:
                self._tag_version(n, STATE, "abandoned")
                continue
            out.append(mv)
        return sorted(out, key=lambda m: int(m.version))

    def still_held(self, t: Ticket) -> bool:
        mv = self.client.get_model_version(self.queue, str(t.number))
        tags = mv.tags or {}
        held = int(tags.get(HELD_SINCE) or 0)
        return tags.get(STATE) == "holding" and _now_ms() - held < self.lease_ms

    def release(self, t: Ticket, outcome: str) -> None:
        self._tag(t, OUTCOME, outcome[:500])
        self._tag(t, RELEASED, str(_now_ms()))
        self._tag(t, STATE, "done")

    def _tag(self, t: Ticket, key: str, value: str) -> None:
        self._tag_version(t.number, key, value)

    def _tag_version(self, number: int, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.queue, str(number), key, value)

"""The fleet-inbox watcher: counts the episodes robots uploaded since the last successful retrain
started and, at `schedule.on_fleet_inbox.min_new_episodes`, emits `wallwm.fleet.inbox.ready`,
which the retrain deployment's `on-fleet-inbox` trigger turns into a retrain
(flows/deployments.py runs this flow every `check_every_s`).

The inbox is `s3://<release.bucket>/<prefix>/<fleet>/<sha256>/...`; an upload counts once its
`_entry.json` exists (components/robot_agent/flywheel.py writes it last), from that object's
LastModified (the S3 server's clock, not the robot's), with the episode count the entry states
(the data build verifies each entry's signature; counting only decides when to retrain). While
a retrain is queued or running nothing is emitted: it would only queue another one.
`python -m flows.inbox_watch` runs one check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from flows.deployments import RETRAIN_FLOW, emit_inbox_ready
from wallwm.config import load_params

ENTRY = "_entry.json"


@dataclass
class InboxCount:
    entries: int = 0
    episodes: int = 0
    fleets: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # keys whose entry could not be read


def count_new_entries(client: Any, bucket: str, prefix: str,
                      since: dt.datetime | None) -> InboxCount:
    """Entries under `prefix/<fleet>/<sha256>/_entry.json` written after `since` (all if None)."""
    from wallwm.release.signing import peek_document

    prefix = prefix.strip("/")
    out = InboxCount()
    fleets: set[str] = set()
    try:
        pages = list(client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                       Prefix=prefix + "/"))
    except client.exceptions.NoSuchBucket:
        raise ValueError(f"release.bucket = {bucket!r}: no such bucket on "
                         f"{client.meta.endpoint_url}; create it (the stack makes the buckets in "
                         "services.s3.buckets) or set release.bucket") from None
    for page in pages:
        for obj in page.get("Contents", []):
            parts = obj["Key"][len(prefix) + 1:].split("/")
            if len(parts) != 3 or parts[2] != ENTRY or len(parts[1]) != 64:
                continue
            if since is not None and obj["LastModified"] <= since:
                continue
            try:
                body = peek_document(client.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
                                     .read())
                episodes = int(body.get("episodes", 0))
            except (ValueError, TypeError, KeyError):
                out.unreadable.append(obj["Key"])
                continue
            out.entries += 1
            out.episodes += episodes
            fleets.add(parts[0])
    out.fleets = sorted(fleets)
    return out


def retrain_state(client: Any, now: dt.datetime) -> tuple[list[str], dt.datetime | None]:
    """(names of retrain runs queued or running now, start of the last completed retrain).

    Any run of the retrain flow counts, from a deployment or started by hand; a scheduled run
    due in the future (the next nightly one) is not queued yet."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    flows = FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW]))

    def runs(types: list[StateType], limit: int) -> list[Any]:
        state = FlowRunFilterState(type=FlowRunFilterStateType(any_=types))
        return client.read_flow_runs(flow_filter=flows,
                                     flow_run_filter=FlowRunFilter(state=state),
                                     sort=FlowRunSort.START_TIME_DESC, limit=limit)

    live = runs([StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED,
                 StateType.SCHEDULED], 200)
    queued = [r.name for r in live if r.state_type != StateType.SCHEDULED
              or (r.expected_start_time is not None and r.expected_start_time <= now)]
    last = [r for r in runs([StateType.COMPLETED], 1) if r.start_time]
    return queued, (last[0].start_time if last else None)


@flow(name="inbox-watch", log_prints=True)
def inbox_watch(params_files: list[str] | None = None,
                sets: list[str] | None = None) -> dict[str, Any]:
    """One look at the fleet inbox: emit `wallwm.fleet.inbox.ready` when enough is new."""
    from prefect.client.orchestration import get_client

    from components.storage.s3 import s3_client

    log = get_run_logger()
    p = load_params(extra_files=params_files or [], sets=sets or [])
    cfg = p.schedule.on_fleet_inbox
    bucket, prefix = p.release.bucket, cfg.prefix.strip("/")
    now = dt.datetime.now(dt.UTC)
    with get_client(sync_client=True) as client:
        queued, since = retrain_state(client, now)
    out: dict[str, Any] = {"bucket": bucket, "prefix": prefix, "threshold": cfg.min_new_episodes,
                           "since": since.isoformat() if since else None, "queued": queued,
                           "emitted": False}
    if queued:
        log.info("a retrain is queued or running (%s): not counting", ", ".join(queued))
        return out
    count = count_new_entries(s3_client(region=p.services.s3.region), bucket, prefix, since)
    out.update(asdict(count))
    for key in count.unreadable:
        log.warning("s3://%s/%s is not a readable inbox entry: not counted", bucket, key)
    log.info("%d new episodes in %d entries since %s (threshold %d)", count.episodes,
             count.entries, out["since"] or "the beginning", cfg.min_new_episodes)
    if count.episodes >= cfg.min_new_episodes:
        if not any(s.split(":", 1)[0] == "fleet_inbox" for s in p.data.sources):
            log.warning("data.sources %s has no fleet_inbox source: the retrain this starts "
                        "will not train on these episodes", p.data.sources)
        emit_inbox_ready(bucket, prefix, count.entries, count.episodes, out["since"],
                         count.fleets)
        out["emitted"] = True
        log.info("emitted wallwm.fleet.inbox.ready")
    return out


def main(argv: list[str] | None = None) -> int:
    from components.stack import require_stack

    require_stack(("prefect", "s3"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args(argv)
    print(json.dumps(inbox_watch(a.params, a.sets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

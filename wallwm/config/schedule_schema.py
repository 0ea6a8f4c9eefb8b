"""The `schedule:` section of `params.yaml`: when the retrain runs by itself (flows/deployments.py).

One retrain deployment carries a nightly cron schedule, a trigger on new data builds and a
trigger on the fleet inbox (fed by the inbox watcher), plus manual runs; at most
`max_concurrent_retrains` of them run at once, the others wait for a slot. Kept in its own file
like eval_schema.py; the whole-tree model (`Params` in schema.py) holds it as
`schedule: ScheduleParams = ScheduleParams()`. Every default here is the value params.yaml
should carry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator


class _Section(BaseModel):
    """The same rules as schema.Section (unknown keys rejected, frozen), defined here so that
    schema.py can import this file without an import cycle."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NightlySchedule(_Section):
    """The scheduled retrain."""

    cron: str = Field("0 2 * * *", description="five-field cron: minute hour day month weekday")
    timezone: str = Field("UTC", description="IANA zone the cron is read in, e.g. Europe/Berlin")
    active: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(v, datetime(2000, 1, 1))
        except CronSimError as e:
            raise ValueError(f"not a five-field cron expression ({e}); e.g. '0 2 * * *' is "
                             "02:00 every day") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as UTC or "
                             "America/New_York") from None
        return v


class DataBuildTrigger(_Section):
    """Retrain when a new data build lands (`wallwm data build`, not the retrain's own build)."""

    active: bool = True


class InboxTrigger(_Section):
    """Retrain when robots have uploaded enough new episodes to the fleet inbox."""

    active: bool = True
    min_new_episodes: PositiveInt = Field(
        20, description="episodes uploaded since the start of the last successful retrain")
    check_every_s: int = Field(900, ge=60, description="how often the inbox watcher looks")
    prefix: str = Field("inbox", min_length=1,
                        description="the inbox's prefix in release.bucket (inbox/<fleet>/...)")


class ScheduleParams(_Section):
    """Deployments of the retrain: where they run, what they pass, when they start."""

    work_pool: str = Field("wallwm-process", min_length=1,
                           description="Prefect work pool the deployments run on")
    max_concurrent_retrains: PositiveInt = 1
    on_collision: Literal["enqueue", "cancel_new"] = Field(
        "enqueue", description="a retrain started while another runs waits (enqueue) or is "
        "cancelled (cancel_new)")
    params_files: list[str] = Field(
        default_factory=list, description="--params of the scheduled and triggered retrains")
    sets: list[str] = Field(default_factory=list,
                            description="--set overrides of the scheduled and triggered retrains")
    nightly: NightlySchedule = NightlySchedule()
    on_data_build: DataBuildTrigger = DataBuildTrigger()
    on_fleet_inbox: InboxTrigger = InboxTrigger()

"""The `eval:` section of `params.yaml`: closed-loop evaluation in Meta-World (wallwm/eval).

Kept in its own file so the evaluation can grow without touching the other sections; the
whole-tree model (`Params` in schema.py) holds it as `eval: EvalParams = EvalParams()`.
Every default here is the value params.yaml should carry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

EVAL_TASKS = ("pick-place-v3", "drawer-open-v3", "button-press-topdown-v3", "push-v3")
CONDITIONS = ("new_layout", "rephrased", "recovery")
MAX_PATH_LENGTH = 500  # Meta-World refuses a step past its max_path_length


class _Section(BaseModel):
    """The same rules as schema.Section (unknown keys rejected, frozen), defined here so that
    schema.py can import this file without an import cycle."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalParams(_Section):
    """Closed-loop evaluation: which episodes, how the policy is driven, what is recorded."""

    tasks: list[str] = list(EVAL_TASKS)
    conditions: list[Literal["new_layout", "rephrased", "recovery"]] = list(CONDITIONS)
    episodes: PositiveInt = Field(50, description="episodes per task and condition")
    seed: int = Field(0, ge=0, description="eval base seed (episode seeds: wallwm/eval/seeds.py)")
    layout_seed: int = Field(
        1_000_003, ge=0, lt=2**32,
        description="MT1 seed of the eval layouts; must differ from every build's sim seed")
    max_steps: PositiveInt = Field(200, le=MAX_PATH_LENGTH, description="control steps")
    execute_frames: PositiveInt = Field(
        4, description="receding horizon: dataset frames of a chunk executed before replanning")
    mode: Literal["event", "unified"] = "event"
    after_plan: Literal["hold", "unified"] = Field(
        "hold", description="event mode once the planner's last event ended: hold still, or "
        "switch to unified mode on the instruction")
    event_max_frames: PositiveInt = Field(
        24, description="planner fallback: advance after this many frames of one event")
    denoise_steps: PositiveInt | None = Field(None, description="None: model.denoise_steps")
    recovery_min_steps: int = Field(
        6, ge=0, description="control steps into the disturbed event before it fires")
    stop_when_done: bool = Field(
        True, description="end an episode once every ground-truth event is complete")
    policies: list[Literal["model", "expert", "zero"]] = ["model", "expert", "zero"]
    workers: PositiveInt = 2
    videos: int = Field(2, ge=0, description="rollout videos per policy and condition")
    video_scale: PositiveInt = Field(4, le=8, description="pixel upscale of the video frames")

    @field_validator("tasks")
    @classmethod
    def _tasks_known(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in EVAL_TASKS]
        if bad or not v:
            raise ValueError(f"unknown or no task(s) {bad}; allowed: {', '.join(EVAL_TASKS)}")
        return v

    @model_validator(mode="after")
    def _non_empty(self) -> EvalParams:
        if not self.conditions:
            raise ValueError(f"eval.conditions is empty; use some of {', '.join(CONDITIONS)}")
        if not self.policies:
            raise ValueError("eval.policies is empty; use some of model, expert, zero")
        return self

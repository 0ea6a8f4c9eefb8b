"""The training curriculum, as the paper stages it, as data.

| stage | trains | frozen | mode | losses | tiers |
|---|---|---|---|---|---|
| `video` | text encoder + video tower | action, reasoning | event | video | all |
| `action` | action tower (+ coupling) | video side, reasoning | event | action, event end | robot |
| `reasoning` | VLM branch (text decoder pretrained first, then frozen) | video, action | unified | CoT | robot |
| `staircase` | VLM branch: Staircase student matches a frozen serial teacher, CoT-anchored | all else | unified | distill + CoT | robot |
| `next_chunk` | action tower on fixed chunks conditioned on CoT latents | video, reasoning | unified | action | robot |
| `end_to_end` | everything but the frozen decoder | - | mixed: an event and a unified batch every step | all | robot |

Each stage starts from the previous stage's weights; `train.stages` lists which run. A stage
with a CoT loss first pretrains the frozen text decoder on the build's text if it is not yet
(`wallwm/train/decoder.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from wallwm.model.config import LossWeights

ROBOT_TIERS = ("t2_robot_public", "t3_robot_real")
ALL_TIERS = ("t0_web", "t1_human", *ROBOT_TIERS)


@dataclass(frozen=True)
class Stage:
    name: str
    trains: tuple[str, ...]  # parameter sets: video | action | reasoning
    mode: str  # event | unified | mixed (both, one batch of each per step)
    loss: LossWeights
    tiers: tuple[str, ...]
    monitor: str  # the validation loss that says whether the stage learned
    distill: bool = False
    # (validation metric, name) of the trivial predictor the monitor is read against, measured
    # on the same draws: a stage learned only if its loss ends below this one
    baseline: tuple[str, str] | None = None

    @property
    def modes(self) -> tuple[str, ...]:
        return ("event", "unified") if self.mode == "mixed" else (self.mode,)

    @property
    def needs_decoder(self) -> bool:
        return self.loss.cot > 0 or self.distill


def stage(name: str, w: LossWeights) -> Stage:
    """The stage `name` with the loss weights of params (`train.loss`) where it uses a loss."""
    zero = LossWeights(video=0.0, action=0.0, event_end=0.0, cot=0.0)
    copy_obs = ("val/baseline/video_fm_copy_obs", "copy-the-observation")
    mean_var = ("val/baseline/action_fm_mean_var", "mean/variance predictor")
    no_latents = ("val/baseline/cot_no_latents", "decoder without CoT latents")
    table = {
        "video": Stage("video", ("video",), "event", LossWeights(**{**zero.__dict__, "video": w.video}),
                       ALL_TIERS, "val/video_fm", baseline=copy_obs),
        "action": Stage("action", ("action",), "event",
                        LossWeights(**{**zero.__dict__, "action": w.action,
                                       "event_end": w.event_end}), ROBOT_TIERS,
                        "val/action_fm", baseline=mean_var),
        "reasoning": Stage("reasoning", ("reasoning",), "unified",
                           LossWeights(**{**zero.__dict__, "cot": max(w.cot, 1e-3)}),
                           ROBOT_TIERS, "val/cot", baseline=no_latents),
        "staircase": Stage("staircase", ("reasoning",), "unified",
                           LossWeights(**{**zero.__dict__, "cot": max(w.cot, 1e-3)}), ROBOT_TIERS,
                           "val/distill", distill=True,
                           baseline=("val/baseline/distill_mean_latent", "mean latent")),
        "next_chunk": Stage("next_chunk", ("action",), "unified",
                            LossWeights(**{**zero.__dict__, "action": w.action}), ROBOT_TIERS,
                            "val/action_fm", baseline=mean_var),
        "end_to_end": Stage("end_to_end", ("video", "action", "reasoning"), "mixed", w,
                            ROBOT_TIERS, "val/loss"),
    }
    if name not in table:
        raise ValueError(f"train.stages: unknown stage {name!r}; allowed: {', '.join(table)}")
    return table[name]

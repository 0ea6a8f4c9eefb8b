"""Closed-loop evaluation of policies in Meta-World, the simulator the sim source records.

The workflow, one episode (wallwm/eval/episode.py):

1. `seeds.make_units` draws eval units (task, layout, seed) that no build holds:
   episode seeds >= 2**32 (a build's are < 2**32), layouts from an MT1 seed that no build
   used; `seeds.assert_disjoint` proves it against the builds' seeds before anything runs.
2. The env resets on the unit; `observe.SimObserver` turns the live state into the dataset
   frame the sim source would have recorded (both cameras, 180-degree rotation, calibration,
   `observation.state`, frame time).
3. The policy acts (`policies/`): a frame policy (`ModelPolicy`, `ZeroPolicy`,
   `ReplayPolicy`) returns dataset-frame actions with a receding horizon; a control policy
   (`ExpertPolicy`, the ceiling) acts per control step as it did when it recorded the data.
   `actions.split_frame_action` turns a frame action back into `render_every` commands.
4. The condition (`conditions.py`): new layout, a held-out paraphrase of the instruction,
   or a mid-event disturbance (the sim source's own perturbations).
5. `progress.ProgressJudge` completes the task's ground-truth events from the simulator's
   state; Meta-World's `success` flag is the verdict.

Many episodes: `runner.plan_jobs` + `runner.run_serial` (or components/compute/ray_eval.py on
Ray, same jobs, same results); `metrics.summarize` (Wilson intervals), `report.write_report`
(tables, plots, report.md/html, metrics.json), `video.episode_video` (MP4 rollouts);
`closed_loop.closed_loop` does all of it from the `eval:` parameters.

`ModelPolicy` (policies/model.py) imports torch and the model; import it from there.
"""

from wallwm.eval.actions import aggregate, split_frame_action
from wallwm.eval.episode import EpisodeResult, EpisodeSettings, run_episode
from wallwm.eval.metrics import summarize, wilson
from wallwm.eval.progress import ProgressJudge, task_events
from wallwm.eval.runner import EpisodeJob, plan_jobs, run_serial
from wallwm.eval.seeds import EvalUnit, SeedOverlapError, assert_disjoint, make_units
from wallwm.eval.spec import EnvSpec, ModelContract, PolicyMismatchError, check_fit

__all__ = ["EnvSpec", "EpisodeJob", "EpisodeResult", "EpisodeSettings", "EvalUnit",
           "ModelContract", "PolicyMismatchError", "ProgressJudge", "SeedOverlapError",
           "aggregate", "assert_disjoint", "check_fit", "make_units", "plan_jobs",
           "run_episode", "run_serial", "split_frame_action", "summarize", "task_events",
           "wilson"]

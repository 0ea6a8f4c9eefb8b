"""Step distillation: a student that acts in K = 1-4 Euler steps, from a teacher that takes N.

The method (README, "Distillation and export"): segment-wise trajectory distillation, the
ODE-map distillation of Luhman & Luhman (2021, "Knowledge Distillation in Iterative Generative
Models for Improved Sampling Speed") applied per student step as TRACT does (Berthelot et al.
2023, "TRACT: Denoising Diffusion Models with Transitive Closure Time-Distillation"): the
student's step j must land where the teacher's N/K Euler steps from the same point land,
for both towers; plus the WALL-WM paper's action-preserving term, the student's own K-step
sample against the true actions (the paper reports 53% worse action error without it).

The workflow, one distillation:

1. `module.DistillModule.init_from_teacher(teacher)`: teacher (frozen) and student (its copy:
   weights, normalization statistics, text decoder) in one Lightning module.
2. `losses.distill_losses` per batch and mode, on the deployment condition (`encode`):
   `trajectory.teacher_states` cuts the teacher's trajectory at the student's steps.
3. `loop.run_distill`: Lightning fit with a checkpoint per `distill.val_every` steps (resume
   from `last.ckpt`), validation against the naive cut on the same draws.
4. `quality`: the table (teacher at N, teacher cut naively to K, student at K: per-dimension
   action error, boundary-frame PSNR, latency; closed-loop success with intervals).

MLflow (components/tracking/distill.py) and the flow (flows/distill_export.py) sit above.
"""

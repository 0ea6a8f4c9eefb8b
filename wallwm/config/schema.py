"""The shape of `params.yaml`: one pydantic model per section, unknown keys rejected.

Every stage reads its parameters from here, so a typo fails at load time with the key path,
never deep inside a run. Later stages add their fields to their own section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wallwm.config.eval_schema import EvalParams
from wallwm.config.schedule_schema import ScheduleParams


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- project / services
class ProjectParams(Section):
    experiment: str = "wallwm"
    seed: int = 0


class MlflowService(Section):
    port: int = Field(5055, ge=0, le=65535, description="0 picks a free port")
    workers: PositiveInt = 2
    artifact_store: Literal["s3", "local"] = "s3"
    bucket: str = "mlflow-artifacts"


class S3Service(Section):
    port: int = Field(9055, ge=0, le=65535)
    region: str = "us-east-1"
    buckets: list[str] = ["mlflow-artifacts", "wallwm-dvc", "wallwm-releases", "wallwm-health"]
    # where the stack health probe writes and deletes its test object: never a bucket robots
    # pull releases from
    health_bucket: str = "wallwm-health"

    @model_validator(mode="after")
    def _health_bucket_is_made(self) -> S3Service:
        if self.health_bucket not in self.buckets:
            raise ValueError(
                f"services.s3.health_bucket = {self.health_bucket!r} is not in services.s3.buckets "
                f"{self.buckets}; add it there so `wallwm stack up` creates it"
            )
        return self


class PrefectService(Section):
    port: int = Field(4205, ge=0, le=65535)


class RayService(Section):
    port: int = Field(6390, ge=0, le=65535)
    num_cpus: int = Field(0, ge=0, description="0 = every core of the machine")
    object_store_mb: PositiveInt = 512


class ServicesParams(Section):
    host: str = "127.0.0.1"
    startup_timeout_s: float = Field(180.0, gt=0)
    on_port_taken: Literal["next_free", "error"] = "next_free"
    mlflow: MlflowService = MlflowService()
    s3: S3Service = S3Service()
    prefect: PrefectService = PrefectService()
    ray: RayService = RayService()


# ----------------------------------------------------------------------------- data
class VideoParams(Section):
    codec: Literal["libsvtav1", "h264", "hevc"] = "libsvtav1"
    pix_fmt: Literal["yuv420p"] = "yuv420p"
    crf: int = Field(30, ge=0, le=63)
    gop: PositiveInt = 2


class SimParams(Section):
    tasks: list[str] = ["pick-place-v3", "drawer-open-v3", "button-press-topdown-v3", "push-v3"]
    cameras: list[str] = ["corner", "gripperPOV"]
    image_size: PositiveInt = 64
    render_every: PositiveInt = 4
    max_steps: PositiveInt = 200
    perturb_prob: float = Field(0.3, ge=0.0, le=1.0)
    seed: int = 0


class AnnotateSection(Section):
    """Event annotation (wallwm/data/annotate): vocabulary, detectors, human edits, captions."""

    vocabulary: list[str] = ["reach", "grasp", "lift", "move", "place", "release", "retreat",
                             "push", "pull", "press", "open", "close"]
    tolerance_frames: PositiveInt = 2  # boundary F1 tolerance against ground truth
    video_penalty: float = Field(0.3, gt=0)  # change-point penalty (video-only tiers)
    video_min_size: PositiveInt = 3
    human_file: str | None = None  # hand-edited annotations.jsonl, merged; part of the build id
    captioner: Literal["template", "http"] = "template"
    vlm_url: str = ""  # OpenAI-compatible endpoint for captioner=http
    vlm_model: str = ""
    time_sync: bool = False  # estimate and fix video/action offsets (unaligned sources)
    time_sync_max_lag: PositiveInt = 5
    time_sync_min_score: float = Field(0.3, ge=0.0, le=1.0)


class CaptionDropParams(Section):
    """The paper's length-aware caption drop: rho(L) on a cosine from `hi` (short) to `lo`."""

    lo: float = Field(0.1, ge=0.0, le=1.0)
    hi: float = Field(0.9, ge=0.0, le=1.0)
    short_frames: PositiveInt = 8
    long_frames: PositiveInt = 48
    seed: int = 0


class ClusterParams(Section):
    k_vl: PositiveInt | None = None  # None: chosen by silhouette over k_range
    k_action: PositiveInt | None = None
    k_range: tuple[int, int] = (2, 16)
    seed: int = 0
    sample_temperature: float = Field(0.0, ge=0.0, le=1.0)  # for the balance report


class DataParams(Section):
    sources: list[str] = ["sim:episodes=20"]
    output_dir: str = "data"
    chunks_size: PositiveInt = 1000
    data_files_size_in_mb: PositiveInt = 100
    video_files_size_in_mb: PositiveInt = 200
    video: VideoParams = VideoParams()
    sim: SimParams = SimParams()
    workers: PositiveInt = 2
    annotate: AnnotateSection = AnnotateSection()
    caption_drop: CaptionDropParams = CaptionDropParams()
    tokenizer_vocab: PositiveInt = Field(2048, ge=261)
    clusters: ClusterParams = ClusterParams()
    dvc_remote: Literal["local", "s3"] = "local"
    push: bool = True
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)


# ----------------------------------------------------------------------------- model
class ModelSize(Section):
    """One preset of the model (wallwm/model/config.py reads it); see docs/model_card.md."""

    width: PositiveInt
    depth: PositiveInt
    heads: PositiveInt
    action_width: PositiveInt
    action_depth: PositiveInt
    image_size: PositiveInt
    patch: PositiveInt
    views: PositiveInt
    frames: PositiveInt
    action_heads: int = Field(0, ge=0, description="0 = same as heads")
    action_dim: PositiveInt = 7
    state_dim: PositiveInt = 8
    action_horizon: PositiveInt = 16
    max_event_len: PositiveInt = 64
    vocab_size: PositiveInt = 4096
    max_text_len: PositiveInt = 64
    text_depth: PositiveInt = 2
    event_types: PositiveInt = 16
    cot_latents: PositiveInt = 8
    vlm_depth: PositiveInt = 4
    relay_depth: PositiveInt = 2

    @model_validator(mode="after")
    def _shapes(self) -> ModelSize:
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        ah = self.action_heads or self.heads
        if self.action_width % ah:
            raise ValueError(f"action_width {self.action_width} is not divisible by {ah} heads")
        if self.relay_depth > self.vlm_depth:
            raise ValueError(f"relay_depth {self.relay_depth} exceeds vlm_depth {self.vlm_depth}")
        return self


class ModelParams(Section):
    presets: dict[str, ModelSize] = {}
    preset: str = "tiny"
    stop_action_grad_to_video: bool = True
    frustum_mask_in_training: bool = True
    frustum_mask_at_inference: bool = False
    depth_range_m: tuple[float, float] = (0.05, 3.0)
    tube_mask_prob: float = Field(0.25, ge=0.0, le=1.0)
    tube_size: PositiveInt = 2
    tube_loss_weight: float = Field(2.0, ge=0.0)
    denoise_steps: PositiveInt = 10
    video_anchor_t: float = Field(1.0, ge=0.0, le=1.0, description="cached video noise level")
    recompute_video: bool = False
    video_target: Literal["x", "v"] = "x"
    action_target: Literal["x", "v"] = "v"
    video_residual: bool = True
    video_loss_space: Literal["v", "x"] = "x"
    video_anchor_share: float = Field(0.25, ge=0.0, le=1.0,
                                      description="share of video-loss samples at the anchor")
    action_skip: bool = True

    @field_validator("preset")
    @classmethod
    def _preset_known(cls, v: str, info: ValidationInfo) -> str:
        if "presets" not in info.data:
            return v  # presets failed validation; that error is reported instead
        presets = info.data["presets"]
        if v not in presets:
            allowed = ", ".join(sorted(presets)) or "<none defined under model.presets>"
            raise ValueError(f"unknown preset; allowed presets: {allowed}")
        return v

    @model_validator(mode="after")
    def _full_rank(self) -> ModelParams:
        """A head that predicts the velocity itself ("v") spans at most `width` dimensions per
        token; refuse the preset in use when its output is wider (the rest of the noise would
        never be removed, measured on tiny: a loss floor of 0.52 and noise frames)."""
        s = self.presets.get(self.preset)
        if s is None:
            return self
        for tower, target, out, width in (
                ("video", self.video_target, 3 * s.patch * s.patch, s.width),
                ("action", self.action_target, s.action_dim, s.action_width)):
            if target == "v" and out > width:
                raise ValueError(
                    f"model.{tower}_target 'v' with preset {self.preset!r}: {out} output values "
                    f"per token through width {width} cannot be a full-rank velocity; use "
                    f"model.{tower}_target x (full rank through the x_t skip) or a wider preset")
        return self

    @property
    def size(self) -> ModelSize:
        return self.presets[self.preset]


# ----------------------------------------------------------------------------- training
class LossWeights(Section):
    video: float = 1.0
    action: float = 1.0
    event_end: float = 0.1
    cot: float = 0.1


StageName = Literal["video", "action", "reasoning", "staircase", "next_chunk", "end_to_end"]


class TrainParams(Section):
    max_steps: PositiveInt = Field(200, description="steps per stage (train.stage_steps "
                                   "overrides one stage)")
    batch_size: PositiveInt = 8
    lr: float = Field(2e-3, gt=0)
    adamw_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    optimizer: Literal["muon", "adamw"] = "muon"
    muon_adjust_lr: Literal["original", "match_rms_adamw"] | None = None
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    workers: PositiveInt = 1
    stages: list[StageName] = ["video", "action"]
    stage_steps: dict[StageName, PositiveInt] = Field(
        default_factory=dict, description="steps of one stage instead of max_steps, e.g. "
        "{end_to_end: 200}: a mixed stage costs several single-mode steps")
    stage_lr: dict[StageName, PositiveFloat] = Field(
        default_factory=dict, description="a stage's factor on train.lr and train.adamw_lr, "
        "e.g. {end_to_end: 0.25}: fine-tune a trained model without re-warming to full lr")
    loss: LossWeights = LossWeights()
    val_every: PositiveInt = 50
    balance_temperature: float = Field(0.5, ge=0.0, le=1.0)
    event_stride: int = Field(0, ge=0, description="event mode, train split: also an item "
                              "every n frames inside each event (the rest of the event from "
                              "there, the question a receding-horizon loop asks mid-event); "
                              "0: event starts only")
    pack_length: PositiveInt = 256
    val_batches: PositiveInt | None = Field(None, description="held-out batches per "
                                            "validation pass; null: the whole val split")
    val_sample_batches: int = Field(2, ge=0, description="val batches sampled with predict")
    decoder_steps: int = Field(150, ge=0, description="text decoder pretraining steps")
    decoder_lr: float = Field(3e-3, gt=0)
    decoder_batch_size: PositiveInt = 16

    def steps_for(self, stage: str) -> int:
        """The step budget of one stage: `stage_steps[stage]`, else `max_steps`."""
        return int(self.stage_steps.get(stage, self.max_steps))


class DistillParams(Section):
    """Step distillation of a trained teacher into a few-step student (wallwm/distill, README
    "Distillation and export"): segment-wise trajectory distillation of both towers plus the
    paper's action-preserving term."""

    teacher_steps: PositiveInt = Field(10, description="N: the teacher's Euler steps")
    student_steps: int = Field(2, ge=1, le=4, description="K: the student's Euler steps")
    max_steps: PositiveInt = 100
    modes: list[Literal["event", "unified"]] = ["event", "unified"]
    towers: list[Literal["video", "action"]] = ["video", "action"]
    batch_size: PositiveInt = 8
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    val_every: PositiveInt = Field(25, description="steps per epoch: validation + checkpoint")
    val_batches: PositiveInt = Field(2, description="validation batches per mode")
    trajectory_weight: float = Field(1.0, ge=0, description="action segments vs the teacher")
    video_weight: float = Field(1.0, ge=0, description="video segments vs the teacher")
    action_weight: float = Field(1.0, ge=0, description="action-preserving: K-step sample vs "
                                 "the true actions")
    end_weight: float = Field(0.1, ge=0, description="end-of-event BCE on the true ends")
    quality_batches: PositiveInt = Field(4, description="held-out batches per mode, quality "
                                         "table")
    closed_loop_episodes: int = Field(2, ge=0, description="per task and condition; 0: none")
    closed_loop_tasks: list[str] = Field(default_factory=list, description="[]: eval.tasks")
    closed_loop_conditions: list[Literal["new_layout", "rephrased", "recovery"]] = [
        "new_layout"]
    seed: int = 0

    @model_validator(mode="after")
    def _steps(self) -> DistillParams:
        if self.student_steps >= self.teacher_steps:
            raise ValueError(f"student_steps {self.student_steps} must be below teacher_steps "
                             f"{self.teacher_steps}: distillation makes sampling cheaper")
        if not self.modes or not self.towers:
            raise ValueError("distill.modes and distill.towers must not be empty")
        if len(set(self.modes)) != len(self.modes) or len(set(self.towers)) != len(self.towers):
            raise ValueError("distill.modes / distill.towers name an entry twice")
        if "action" in self.towers and self.trajectory_weight + self.action_weight <= 0:
            raise ValueError("distill.towers has 'action' but trajectory_weight and "
                             "action_weight are both 0: nothing would train it")
        return self


class ExportParams(Section):
    """ONNX export of the student, FP8/BF16, TensorRT and the bundle (wallwm/export)."""

    opset: int = Field(21, ge=19, le=23, description="FP8 Q/DQ needs 19; onnxruntime 1.32 "
                       "runs up to 23")
    modes: list[Literal["event", "unified"]] = ["event", "unified"]
    video_step: bool = Field(True, description="also export the video tower's step graph")
    precisions: list[Literal["fp32", "bf16", "fp8"]] = ["fp32", "bf16", "fp8"]
    default_precision: Literal["fp32", "bf16", "fp8"] = "fp32"
    fp8_activations: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: activation Q/DQ only where the FP8 bound still holds")
    tensorrt: bool = Field(False, description="build engines when tensorrt and an FP8 GPU "
                           "(SM >= 8.9) are present; else skipped with the reason")
    tensorrt_max_batch: PositiveInt = 8
    embodiment: str = Field("metaworld-sawyer", min_length=1,
                            description="the bundle's embodiment (one of registry.embodiments)")
    parity_atol: float = Field(1e-4, gt=0, description="ONNX FP32 vs PyTorch, max |diff|")
    fp8_min_cosine: float = Field(0.98, ge=0, le=1, description="worst action dim (GR00T)")
    bf16_min_cosine: float = Field(0.99, ge=0, le=1, description="worst action dim (GR00T)")
    calibration_batches: PositiveInt = Field(4, description="build batches for FP8 amax")
    accuracy_batches: PositiveInt = Field(4, description="held-out batches for the cosines")
    batch_size: PositiveInt = 8
    reference_batch: PositiveInt = Field(2, description="rows of the health-check sample")
    health_atol: dict[str, float] = Field(
        default_factory=lambda: {"fp32": 1e-4, "bf16": 1e-3, "fp8": 1e-2},
        description="floor of the health check's tolerance per precision")
    health_margin: float = Field(4.0, ge=1, description="tolerance = max(floor, margin x the "
                                 "deviation measured at export)")
    latency_repeats: PositiveInt = 5
    threads: PositiveInt = Field(1, description="onnxruntime intra-op threads (latency, "
                                 "control rate: one core)")
    runtime_episodes: int = Field(2, ge=0, description="runtime parity in closed loop: "
                                  "episodes per task and condition; 0: none")
    runtime_conditions: list[Literal["new_layout", "rephrased", "recovery"]] = ["new_layout"]
    runtime_precisions: list[Literal["fp32", "bf16", "fp8"]] = ["fp32", "fp8"]
    workers: int = Field(2, ge=1, description="processes tracing the graphs in parallel "
                         "(torch.export is single-threaded); 1: in this process")
    seed: int = 0

    @model_validator(mode="after")
    def _precisions(self) -> ExportParams:
        if "fp32" not in self.precisions:
            raise ValueError("export.precisions must include fp32: parity and every accuracy "
                             "figure are measured against it")
        if self.default_precision not in self.precisions:
            raise ValueError(f"export.default_precision {self.default_precision!r} is not in "
                             f"export.precisions {self.precisions}")
        missing = sorted(set(self.precisions) - set(self.health_atol))
        if missing:
            raise ValueError(f"export.health_atol has no floor for precision(s) {missing}")
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"export.modes {self.modes}: name each mode once, at least one")
        return self


class GateParams(Section):
    """Automated gates a candidate must pass before anyone may approve it (components/registry).

    Each bound is compared with a figure gathered from MLflow runs; the regression gate also
    needs `registry.regression_margin`.
    """

    min_success_rate: float = Field(0.5, ge=0.0, le=1.0, description="closed-loop success")
    max_action_mse: float = Field(0.5, gt=0, description="offline action error")
    max_onnx_parity_abs: float = Field(1e-3, gt=0, description="ONNX vs torch, max |diff|")
    min_fp8_cosine: float = Field(0.98, ge=0.0, le=1.0, description="FP8, worst dimension")
    max_latency_ms: float = Field(200.0, gt=0, description="budget of runtimes not listed below")
    latency_budget_ms: dict[str, float] = Field(
        default_factory=dict, description="per target runtime (manifest runtime.name)")

    @field_validator("latency_budget_ms")
    @classmethod
    def _positive_budgets(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not x > 0}
        if bad:
            raise ValueError(f"every budget must be > 0 ms, got {bad}")
        return v


_USERNAME = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$"


class RegistryParams(Section):
    """The model registry: who may write what, and what a promotion needs (components/registry).

    `{embodiment}` in a model name is replaced by the bundle's embodiment; the stack creates
    the models of every embodiment listed here and grants the users below their permissions.
    """

    embodiments: list[str] = Field(["metaworld-sawyer"], min_length=1)
    candidates_model: str = "wallwm-candidates-{embodiment}"
    release_model: str = "wallwm"
    pipeline_user: str = Field("wallwm-pipeline", pattern=_USERNAME)
    promoter_user: str = Field("wallwm-promoter", pattern=_USERNAME)
    reviewers: list[str] = []
    demo_reviewer: bool = Field(
        False, description="create `demo-reviewer` (local demo only) and count it as a reviewer")
    approvals_required: PositiveInt = 1
    max_approval_age_hours: float = Field(72.0, gt=0)
    regression_margin: float = Field(0.05, ge=0.0, le=1.0, description="success-rate points")
    audit_experiment: str = Field("wallwm-registry-audit", min_length=1)
    lock_lease_s: float = Field(300.0, gt=0, description="a promotion holding longer is stale")
    lock_wait_s: float = Field(120.0, gt=0, description="how long a promotion waits its turn")

    @field_validator("reviewers")
    @classmethod
    def _reviewer_names(cls, v: list[str]) -> list[str]:
        import re

        bad = [r for r in v if not re.match(_USERNAME, r)]
        if bad:
            raise ValueError(f"reviewer names {bad} are not valid user names ({_USERNAME})")
        if len(set(v)) != len(v):
            raise ValueError(f"reviewers lists a name twice: {v}")
        return v

    @model_validator(mode="after")
    def _names(self) -> RegistryParams:
        for key in ("candidates_model", "release_model"):
            name = getattr(self, key)
            if len(self.embodiments) > 1 and "{embodiment}" not in name:
                raise ValueError(f"registry.{key} = {name!r} must contain '{{embodiment}}' when "
                                 f"registry.embodiments lists several ({self.embodiments})")
        if self.candidates_model == self.release_model:
            raise ValueError("registry.candidates_model and registry.release_model must differ "
                             "(the pipeline writes one, only reviewers the other)")
        roles = [self.pipeline_user, self.promoter_user]
        clash = sorted(set(roles) & set(self.reviewers)) + (
            [self.pipeline_user] if self.pipeline_user == self.promoter_user else [])
        if clash:
            raise ValueError(f"registry: {clash} cannot be both a service user and a reviewer "
                             "(four eyes); pipeline_user, promoter_user and reviewers must differ")
        return self


class ReleaseParams(Section):
    channel: str = "stable"
    bucket: str = "wallwm-releases"
    canary_share: float = Field(0.1, gt=0.0, le=1.0)
    metadata_expiry_days: PositiveInt = 7


class RetrainParams(Section):
    """The end-to-end retrain (flows/retrain.py): what it runs after training."""

    closed_loop_episodes: int = Field(1, ge=0, description="per task and condition")
    runtime_episodes: int | None = Field(None, ge=0, description="override export.runtime_"
                                                                 "episodes in the retrain")
    distill_closed_loop_episodes: int | None = Field(
        None, ge=0, description="override distill.closed_loop_episodes in the retrain")
    demo_approve: bool = Field(False, description="DEMO ONLY: the demo reviewer approves "
                                                  "(needs registry.demo_reviewer)")
    release: bool = True  # publish + staged rollout after a promotion
    fleet: str = "demo"
    simulate_fleet: bool = True  # start the fleet as local agent processes
    fleet_robots: PositiveInt = 5
    rollout_timeout_s: float = Field(300.0, gt=0)
    stage_timeout_s: float = Field(3600.0, gt=0, description="per stage of the retrain")
    stage_retries: int = Field(1, ge=0, description="retries of a stage after a transient "
                                                    "failure (network, a service away)")
    retry_delay_s: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _version_safe(self) -> RetrainParams:
        if not self.fleet.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"fleet {self.fleet!r}: letters, digits, '-' and '_' only")
        return self


class Params(Section):
    """The whole resolved configuration."""

    project: ProjectParams = ProjectParams()
    services: ServicesParams = ServicesParams()
    data: DataParams = DataParams()
    model: ModelParams
    train: TrainParams = TrainParams()
    distill: DistillParams = DistillParams()
    export: ExportParams = ExportParams()
    gates: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    release: ReleaseParams = ReleaseParams()
    eval: EvalParams = EvalParams()
    retrain: RetrainParams = RetrainParams()
    schedule: ScheduleParams = ScheduleParams()

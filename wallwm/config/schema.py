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
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)


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
    buckets: list[str] = ["mlflow-artifacts", "wallwm-dvc", "wallwm-releases"]


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

    @property
    def size(self) -> ModelSize:
        return self.presets[self.preset]


# ----------------------------------------------------------------------------- training
class LossWeights(Section):
    video: float = 1.0
    action: float = 1.0
    event_end: float = 0.1
    cot: float = 0.1


class TrainParams(Section):
    max_steps: PositiveInt = 200
    batch_size: PositiveInt = 8
    lr: float = Field(2e-3, gt=0)
    adamw_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    optimizer: Literal["muon", "adamw"] = "muon"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    workers: PositiveInt = 1
    stages: list[
        Literal["video", "action", "reasoning", "staircase", "next_chunk", "end_to_end"]
    ] = [
        "video",
        "action",
    ]
    loss: LossWeights = LossWeights()
    val_every: PositiveInt = 50
    balance_temperature: float = Field(0.5, ge=0.0, le=1.0)
    pack_length: PositiveInt = 256


class DistillParams(Section):
    teacher_steps: PositiveInt = 10
    student_steps: PositiveInt = 2
    max_steps: PositiveInt = 100


class ExportParams(Section):
    opset: int = Field(21, ge=19)
    fp8: bool = True
    tensorrt: bool = False


class GateParams(Section):
    min_success_rate: float = Field(0.5, ge=0.0, le=1.0)
    max_action_mse: float = Field(0.5, gt=0)
    min_fp8_cosine: float = Field(0.99, ge=0.0, le=1.0)
    max_latency_ms: float = Field(200.0, gt=0)


class ReleaseParams(Section):
    channel: str = "stable"
    bucket: str = "wallwm-releases"
    canary_share: float = Field(0.1, gt=0.0, le=1.0)
    metadata_expiry_days: PositiveInt = 7


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
    release: ReleaseParams = ReleaseParams()

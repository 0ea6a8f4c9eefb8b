"""TensorRT engines from the bundle's ONNX graphs (GPU only; skipped with a reason elsewhere).

TensorRT 10+ builds *strongly typed* networks: no precision flags, each tensor keeps the type
the ONNX graph gives it, and FP8 comes from our explicit Q/DQ (PITFALLS.md). FP8 needs a GPU of
compute capability >= 8.9 (Ada, Hopper, Blackwell; not Jetson Orin). An engine is tied to the
GPU architecture and the TensorRT version, which the manifest records per entry.

`tensorrt` lives in the `gpu` extra only (pyproject.toml); `availability()` says why engines
cannot be built here (no package, no CUDA device, or an architecture without FP8), and the
export records that reason instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIN_FP8_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str
    gpu_arch: str = ""
    trt_version: str = ""


def _capability() -> tuple[int, int] | None:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return int(major), int(minor)
    except Exception:  # noqa: BLE001 - a broken CUDA install is "no GPU" here
        return None
    return None


def availability(precision: str = "fp8") -> Availability:
    """Whether engines of `precision` can be built on this machine, and why not."""
    try:
        import tensorrt as trt  # noqa: F401 - the GPU extra
    except ImportError:
        return Availability(False, "tensorrt is not installed (it is in the `gpu` extra: "
                            "pip install '.[gpu]' on a machine with an NVIDIA GPU)")
    cap = _capability()
    if cap is None:
        return Availability(False, "no CUDA GPU is visible (torch.cuda.is_available() is "
                            "False)", trt_version=trt.__version__)
    arch = f"sm_{cap[0]}{cap[1]}"
    if precision == "fp8" and cap < MIN_FP8_CAPABILITY:
        return Availability(False, f"GPU {arch} has no FP8 tensor cores (needs SM >= 8.9)",
                            gpu_arch=arch, trt_version=trt.__version__)
    return Availability(True, "", arch, trt.__version__)


def build_engine(onnx_path: Path, plan_path: Path, shapes: dict[str, tuple[tuple[int, ...],
                 tuple[int, ...], tuple[int, ...]]], workspace_mb: int = 1024) -> Path:
    """Parse `onnx_path` into a strongly typed network and write the serialized engine.

    `shapes`: per dynamic input, (min, opt, max) shapes for the optimization profile."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(plan))
    return plan_path


def profile_shapes(inputs: dict[str, list], max_batch: int, max_text: int
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) per input from symbolic shapes: B in [1, max_batch] (opt 1), text dims
    in [2, max_text] (opt max_text // 2), the rest fixed."""
    out = {}
    for name, shape in inputs.items():
        lo, opt, hi = [], [], []
        for d in shape:
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
            elif d == "B":
                lo.append(1), opt.append(1), hi.append(max_batch)
            else:  # Lt, Lc
                lo.append(2), opt.append(max(2, max_text // 2)), hi.append(max_text + 1)
        out[name] = (tuple(lo), tuple(opt), tuple(hi))
    return out

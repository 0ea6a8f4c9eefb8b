"""Ray Train for the training stages: the same Lightning code in N DDP workers (gloo on CPU,
NCCL on GPU), on the local Ray or any cluster at RAY_ADDRESS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.compute.ray_cluster import connect


def fit_on_ray(worker_fn: Callable[[dict], None], config: dict[str, Any], workers: int,
               storage: Path, name: str, use_gpu: bool = False) -> dict[str, Any]:
    """Run `worker_fn(config)` on `workers` Ray Train workers; returns rank 0's last report."""
    connect()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker=worker_fn,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(storage), name=name),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return dict(result.metrics or {})


def ray_lightning_kwargs() -> dict[str, Any]:
    """Trainer arguments that make Lightning run under Ray Train's process group."""
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    # a curriculum stage leaves parts of its trainable set idle (e.g. unified-mode heads in an
    # event-mode stage), which DDP must be told about
    return {"strategy": RayDDPStrategy(find_unused_parameters=True),
            "plugins": [RayLightningEnvironment()], "devices": "auto"}

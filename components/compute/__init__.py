"""Ray adapter: connect to the stack's head (or `RAY_ADDRESS`, any cluster) and run work there."""

from components.compute.ray_cluster import cluster_cpus, connect

__all__ = ["cluster_cpus", "connect"]

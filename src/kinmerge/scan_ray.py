"""The exact kinship matrix on a Ray cluster: kept importable here; the code is ``kinmerge.scan.shards``."""

from kinmerge.scan.shards import ShardTask, scan_ray, scan_shard, shard_plans, tensor_bytes

__all__ = ["ShardTask", "scan_ray", "scan_shard", "shard_plans", "tensor_bytes"]

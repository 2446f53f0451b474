"""Where model work runs: decided from the Ray cluster (its GPUs now, or GPU nodes its autoscaler can start),
never from the driver's machine, and a GPU used is a GPU reserved."""

import pytest

from vdp_ray.options import OptionError
from vdp_ray.raytools import PlacementError, cluster_has_gpus, gpu_placement

YES, NO, UNKNOWN = (lambda: True), (lambda: False), (lambda: None)


def test_a_gpu_is_used_only_where_reserved_and_reserved_only_where_used():
    assert gpu_placement("auto", None, YES) == ("cuda", 1.0)
    assert gpu_placement("auto", None, NO) == ("cpu", 0.0)
    assert gpu_placement("auto", None, UNKNOWN) == ("cpu", 0.0)  # no cluster to ask: the CPU
    assert gpu_placement("auto", 0.5, YES) == ("cuda", 0.5)  # two replicas on one GPU
    assert gpu_placement("cuda", None, UNKNOWN) == ("cuda", 1.0)  # asked for: trusted, and reserved
    assert gpu_placement("cpu", None, YES) == ("cpu", 0.0)
    with pytest.raises(PlacementError, match="--device cuda: the Ray cluster has no GPUs"):
        gpu_placement("cuda", None, NO)
    with pytest.raises(PlacementError, match="--device cpu: a GPU reservation"):
        gpu_placement("cpu", 1.0, YES)


def test_gpu_nodes_scaled_to_zero_still_count_as_gpus(ray_local):
    """The autoscaler's node groups, as a cluster launcher or KubeRay registers them in the GCS: a GPU group
    with no node up yet (scaled to zero) means GPU work, where a look at the current resources says CPU."""
    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    assert cluster_has_gpus() is False  # the session's local Ray: CPUs only
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.name, group.min_count, group.max_count = "gpu-workers", 0, 4
    group.resources["CPU"], group.resources["GPU"] = 32, 8
    namespace = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode()
    key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode()
    _internal_kv_put(key, config.SerializeToString(), overwrite=True, namespace=namespace)
    try:
        assert ray.cluster_resources().get("GPU", 0) == 0 and cluster_has_gpus() is True
    finally:
        _internal_kv_del(key, namespace=namespace)
    assert cluster_has_gpus() is False


def test_vdp_serve_reserves_what_its_replicas_use(ray_local):
    from vdp_ray.serve.options import ServeOptions

    assert ServeOptions(export="x").placement() == ("cpu", 0.0)
    assert ServeOptions(export="x", device="cpu").placement() == ("cpu", 0.0)
    with pytest.raises(OptionError, match="no GPUs"):
        ServeOptions(export="x", device="cuda").placement()
    with pytest.raises(OptionError, match="GPU reservation"):
        ServeOptions(export="x", device="cpu", gpus_per_replica=1).check()

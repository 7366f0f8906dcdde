"""The chart past one Redis (DESIGN "Growth"): events spread over stream partitions, and a Redis
Cluster instead of the bundled Redis. The ConfigMap carries both settings, the chart refuses a
cluster it would have to bundle, and KEDA reads every partition's backlog (entries undelivered
plus entries pending) and scales the workers on the sum."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest

from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Render,
    find,
    one,
    run_helm,
)
from tests.chart.test_chart import CUSTOM_KINDS

BUNDLED_REDIS = f"{RELEASE}-queueflow-redis.{NAMESPACE}.svc.cluster.local:6379"
CLUSTER_NODES = "redis-0.example.internal:6380,redis-1.example.internal:6380"
KEDA_SCENARIOS = {"standalone": "keda", "cluster": "redis-cluster"}


def with_config(values: dict, **config: object) -> dict:
    """These values with more `config` settings."""
    return {**values, "config": {**values.get("config", {}), **config}}


def streams(partitions: int) -> list[str]:
    """The streams QUEUEFLOW_STREAM_PARTITIONS names (braces literal: Redis Cluster hash tags)."""
    if partitions == 1:
        return ["events_stream"]
    return [f"events_stream:{{{i}}}" for i in range(partitions)]


def refusal(helm: Path, values: dict) -> str:
    done = run_helm(helm, "template", RELEASE, str(CHART), values=values)
    assert done.returncode != 0, values
    return done.stderr


def test_the_configmap_carries_the_partitions_and_cluster_mode(render: Render) -> None:
    data = one(render(), "ConfigMap", f"{RELEASE}-queueflow")["data"]
    assert (data["QUEUEFLOW_STREAM_PARTITIONS"], data["QUEUEFLOW_REDIS_CLUSTER"]) == ("1", "false")
    data = one(render(SCENARIOS["redis-cluster"]), "ConfigMap", f"{RELEASE}-queueflow")["data"]
    assert (data["QUEUEFLOW_STREAM_PARTITIONS"], data["QUEUEFLOW_REDIS_CLUSTER"]) == ("4", "true")
    assert data["QUEUEFLOW_STREAM"] == "events_stream"  # the base name: the app adds :{i}
    assert data["QUEUEFLOW_REDIS_WAIT_REPLICAS"] == "1"
    assert (
        one(render(), "ConfigMap", f"{RELEASE}-queueflow")["data"]["QUEUEFLOW_REDIS_WAIT_REPLICAS"]
        == "0"
    )


def test_waiting_for_replicas_is_never_asked_of_the_bundled_redis(helm: Path) -> None:
    message = refusal(helm, {"config": {"redisWaitReplicas": 1}})
    assert "config.redisWaitReplicas" in message and "replicas" in message
    assert "redisWaitReplicas" in refusal(
        helm, with_config(SCENARIOS["redis-cluster"], redisWaitReplicas=-1)
    )
    too_short = with_config(SCENARIOS["redis-cluster"], redisTimeoutS=0.3)
    assert "config.redisTimeoutS of at least 0.4" in refusal(helm, too_short)


@pytest.mark.parametrize("partitions", [1, 4])
@pytest.mark.parametrize("redis", KEDA_SCENARIOS)
def test_keda_reads_the_lag_and_the_pending_entries_of_every_partition(
    render: Render, redis: str, partitions: int
) -> None:
    objects = render(with_config(SCENARIOS[KEDA_SCENARIOS[redis]], streamPartitions=partitions))
    for obj in objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, "1.33.0", strict=True)
    scaled_object = one(objects, "ScaledObject")
    triggers = scaled_object["spec"]["triggers"]
    expected = [
        (f"{m}_{i}", s) for i, s in enumerate(streams(partitions)) for m in ("lag", "pending")
    ]
    assert [(t["name"], t["metadata"]["stream"]) for t in triggers] == expected
    auth = one(objects, "TriggerAuthentication")["metadata"]["name"]
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == (
            "redis-cluster-streams" if redis == "cluster" else "redis-streams"
        )
        assert meta["consumerGroup"] == "analytics_workers"
        # KEDA measures the lag (XINFO GROUPS) when lagCount is set, else the PEL (XPENDING).
        if trigger["name"].startswith("lag_"):
            assert meta["lagCount"] == "5000" and "pendingEntriesCount" not in meta
        else:
            assert meta["pendingEntriesCount"] == "5000" and "lagCount" not in meta
        assert meta["activationLagCount"] == "0"
        if redis == "cluster":
            assert meta["addresses"] == CLUSTER_NODES and meta["enableTLS"] == "true"
            assert "address" not in meta and "databaseIndex" not in meta  # a cluster has db 0 only
        else:
            assert (meta["address"], meta["databaseIndex"]) == (BUNDLED_REDIS, "0")
            assert "addresses" not in meta
        assert trigger["authenticationRef"] == {"name": auth}

    modifiers = scaled_object["spec"]["advanced"]["scalingModifiers"]
    terms = modifiers["formula"].split(" + ")
    assert terms == [name for name, _ in expected]  # the sum of every trigger, each once
    assert all(re.fullmatch(r"[a-z]+_[0-9]+", t) for t in terms)  # expr identifiers, no '-'
    assert modifiers["target"] == "5000" and modifiers["activationTarget"] == "0"
    assert modifiers["metricType"] == "AverageValue"  # replicas = backlog / target


def test_the_backlog_per_pod_and_the_wake_up_threshold_reach_the_formula(render: Render) -> None:
    values = with_config(SCENARIOS["keda"], streamPartitions=2)
    values["worker"] = {
        **values["worker"],
        "keda": {**values["worker"]["keda"], "lagPerReplica": 800, "activationLag": 10},
    }
    spec = one(render(values), "ScaledObject")["spec"]
    assert spec["advanced"]["scalingModifiers"]["target"] == "800"
    assert spec["advanced"]["scalingModifiers"]["activationTarget"] == "10"
    for trigger in spec["triggers"]:  # what a KEDA without scalingModifiers would go by
        meta = trigger["metadata"]
        assert meta.get("lagCount", meta.get("pendingEntriesCount")) == "800"
        assert meta["activationLagCount"] == "10"


def test_partitions_leave_the_hpa_alone(render: Render) -> None:
    def worker_hpa(values: dict) -> dict:
        return one(render(values), "HorizontalPodAutoscaler", "-worker")["spec"]

    assert worker_hpa({"config": {"streamPartitions": 4}}) == worker_hpa({})
    assert not find(render({"config": {"streamPartitions": 4}}), "ScaledObject")


@pytest.mark.parametrize("partitions", [0, -1, 257, 1.5, "4"])
def test_the_schema_refuses_partition_counts_the_setting_refuses(
    helm: Path, partitions: object
) -> None:
    assert "streamPartitions" in refusal(helm, {"config": {"streamPartitions": partitions}})


def test_a_redis_cluster_is_never_the_bundled_redis(helm: Path, render: Render) -> None:
    for values in (
        {"config": {"redisCluster": True}},
        with_config(SCENARIOS["keda"], redisCluster=True),
    ):
        message = refusal(helm, values)
        assert "config.redisCluster" in message and "redis.enabled=false" in message
    external = {
        "redis": {"enabled": False},
        "externalRedis": {"url": "redis://redis-0.example:6379"},
    }
    objects = render({**external, "config": {"redisCluster": True}})
    assert not find(objects, "StatefulSet", "-redis")
    # KEDA: a cluster has only database 0, and its nodes must be named.
    cluster = SCENARIOS["redis-cluster"]
    worker = {**cluster["worker"], "keda": {**cluster["worker"]["keda"], "databaseIndex": 2}}
    assert "databaseIndex must be 0" in refusal(helm, {**cluster, "worker": worker})
    worker = {**cluster["worker"], "keda": {**cluster["worker"]["keda"], "redisAddress": ""}}
    assert "redisAddress" in refusal(helm, {**cluster, "worker": worker})

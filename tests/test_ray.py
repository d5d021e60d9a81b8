"""`collect --executor ray`: a real multi-node Ray cluster on this machine (every node on 127.0.0.1). A device is
driven from the node that claims it; killing that node mid-run loses no row and stores none twice."""
import dataclasses
import os
import threading
import time
from collections import Counter

import psutil
import pytest

ray = pytest.importorskip("ray")

from latkit.collector import Settings, Store, api  # noqa: E402
from latkit.collector.ray_executor import RESOURCE, parse_executor  # noqa: E402
from latkit.collector.rounds import rounds_store  # noqa: E402
from latkit.collector.errors import LatkitError  # noqa: E402
from conftest import small_onnx_models  # noqa: E402

# 0.4 s per job (the sample cap raised so that tiny models take it too): a run lasts long enough to be killed
SETTINGS = Settings(warmup_min_count=2, warmup_min_s=0.01, repeats_min_count=5, repeats_min_s=0.4,
                    repeats_max_s=0.4, repeats_max_count=10_000_000, rounds=1)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    old = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # nodes bind 127.0.0.1: loopback only
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if old is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = old


@pytest.fixture(scope="module")
def models(tmp_path_factory, export_cache):
    return small_onnx_models(tmp_path_factory.mktemp("models"), range(4, 12), export_cache)


def agents_in(workdir) -> list:
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if any(str(workdir) in c for c in (p.info["cmdline"] or [])) and p.info["status"] != psutil.STATUS_ZOMBIE]


def test_executor_values_are_checked():
    assert parse_executor("local") is None and parse_executor("ray") == "" and parse_executor("ray=auto") == "auto"
    with pytest.raises(LatkitError, match="--executor 'rey'"):
        parse_executor("rey")


def test_a_device_runs_on_the_node_that_claims_it_with_exports_as_tasks(cluster, reg, tmp_path):
    node = cluster.add_node(num_cpus=1, resources={RESOURCE.format("loc"): 1})
    try:
        report = api.collect_space("nb201", 3, ["loc"], "onnxruntime", settings=SETTINGS, out=tmp_path / "d",
                                   registry=reg, progress=False, executor=cluster.address)
        assert report.ok, [d.message for d in report.devices]
        assert report.devices[0].node == node.node_id  # the only node that can reach `loc` drove it
        rows = Store(tmp_path / "d").read(columns=["key", "space", "status"]).to_pylist()
        assert len({r["key"] for r in rows}) == len(rows) == 3 and {r["status"] for r in rows} == {"ok"}
        again = api.collect_space("nb201", 3, ["loc"], "onnxruntime", settings=SETTINGS, out=tmp_path / "d",
                                  registry=reg, progress=False, executor=cluster.address)
        assert again.devices[0].skipped == 3 and again.devices[0].measured == 0  # resume by key
    finally:
        cluster.remove_node(node)


def test_a_killed_node_loses_no_row_and_stores_none_twice(cluster, reg, models, tmp_path):
    """The node driving the device dies mid-run, in round 2 of 2; a new node that claims the device finishes the
    study and takes back the first rounds the dead node timed (saved in `_rounds/` of the dataset)."""
    first = cluster.add_node(num_cpus=1, resources={RESOURCE.format("loc"): 1})
    out, result = tmp_path / "d", {}
    settings = dataclasses.replace(SETTINGS, rounds=2)
    run = threading.Thread(target=lambda: result.setdefault("report", api.collect_models(
        api.model_files([models]), ["loc"], settings=settings, out=out, registry=reg, progress=False,
        executor=cluster.address)))
    run.start()
    deadline = time.time() + 240
    while run.is_alive() and time.time() < deadline and (
            not Store(out).exists() or Store(out).read(columns=["key"]).num_rows < 2):
        time.sleep(0.2)
    stored_before = Store(out).read(columns=["key"]).num_rows
    assert 2 <= stored_before < 8, "the run must be killed mid-way"
    cluster.remove_node(first)
    deadline = time.time() + 30
    while agents_in(tmp_path / "loc") and time.time() < deadline:
        time.sleep(0.2)
    assert not agents_in(tmp_path / "loc"), "the dead node's agent outlived it"
    saved = {x["key"] for x in rounds_store(Store(out)).read(columns=["key"]).to_pylist()}  # all it saved
    second = cluster.add_node(num_cpus=1, resources={RESOURCE.format("loc"): 1})
    try:
        run.join(timeout=300)
        assert not run.is_alive()
        report = result["report"]
        assert report.ok and report.devices[0].node == second.node_id
        rows = Store(out).read(columns=["key", "rounds"]).to_pylist()
        counts = Counter(x["key"] for x in rows)
        assert len(counts) == 8 and set(counts.values()) == {1}  # none lost, none doubled
        assert {x["rounds"] for x in rows} == {2}
        taken = report.devices[0].rounds_taken  # the saved first rounds of models the dead node had not stored
        assert 1 <= taken <= len(saved), (taken, len(saved), stored_before)
        assert report.devices[0].measured + report.devices[0].skipped >= 8 - stored_before
    finally:
        cluster.remove_node(second)
    time.sleep(1)
    assert not agents_in(tmp_path / "loc")

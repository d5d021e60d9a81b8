"""Streaming collection: jobs measured as they arrive by one real agent, rows routed to their stores."""
import dataclasses

import pytest

from latkit.collector import Device, Job, LatkitError, Store
from latkit.collector.runner import DeviceRunner
from latkit.collector.stream import measure_stream


@pytest.fixture(scope="module")
def torch_artifacts(tmp_path_factory):
    """The tiny CNN traced at batch 1 (TorchScript) and exported with torch.export."""
    import torch
    from latkit.collector import export
    from conftest import tiny_cnn
    cache = tmp_path_factory.mktemp("exports")
    x = torch.randn(1, 3, 32, 32)
    return {fmt: export(tiny_cnn(), (x,), fmt, arch=f"tiny_{fmt}", cache_dir=cache) for fmt in ("torchscript", "pt2")}


def test_jobs_are_measured_as_they_arrive_into_their_stores(torch_artifacts, fast, tmp_path):
    dev = Device("local", lease=str(tmp_path / "lease"))
    ts = dataclasses.replace(fast, runtime="torch")
    wanted = [Job(torch_artifacts["torchscript"], "local", dataclasses.replace(ts, batch_size=2)),
              Job(torch_artifacts["torchscript"], "local", dataclasses.replace(ts, batch_size=1)),
              Job(torch_artifacts["pt2"], "local", ts)]
    stores = {2: Store(tmp_path / "bs2"), None: Store(tmp_path / "other")}
    events = []

    def arriving():
        for i, job in enumerate(wanted):
            events.append(f"arrived {i}")
            yield job

    for i, m in enumerate(measure_stream(dev, arriving(), lambda j: stores.get(j.settings.batch_size, stores[None]))):
        events.append(f"measured {i}")
        assert m.status == "ok", m.error
    assert events == ["arrived 0", "measured 0", "arrived 1", "measured 1", "arrived 2", "measured 2"]
    big = stores[2].read().to_pylist()
    assert [r["input_shape"] for r in big] == ["2x3x32x32"] and big[0]["batch_size"] == 2  # one trace, any batch
    other = stores[None].read().to_pylist()
    assert sorted(r["model_format"] for r in other) == ["pt2", "torchscript"]
    assert all(r["input_shape"] == "1x3x32x32" for r in other)
    assert all(s.devices() for s in stores.values())  # each store knows the hardware behind its rows


def test_stopping_early_releases_the_device(torch_artifacts, fast, tmp_path):
    dev = Device("local", lease=str(tmp_path / "lease"))
    job = Job(torch_artifacts["pt2"], "local", dataclasses.replace(fast, runtime="torch"))
    store = Store(tmp_path / "data")
    other = dataclasses.replace(job, settings=dataclasses.replace(job.settings, seed=1))
    stream = measure_stream(dev, iter([job, other]), lambda j: store)
    assert next(stream).status == "ok"
    stream.close()  # e.g. a time budget is spent
    assert store.read().num_rows == 1
    with DeviceRunner(dev, wait=False):  # the lease is free at once
        pass


def test_jobs_that_want_shuffled_rounds_are_refused(torch_artifacts, fast, tmp_path):
    dev = Device("local", lease=str(tmp_path / "lease"))
    job = Job(torch_artifacts["pt2"], "local", dataclasses.replace(fast, runtime="torch", rounds=4))
    with pytest.raises(LatkitError, match="timed in one round, this one asks for 4; give rounds=1 or use collect"):
        next(measure_stream(dev, [job], lambda j: Store(tmp_path / "data")))

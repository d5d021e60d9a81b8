"""A dataset on an object store: the README says `--out` takes any pyarrow filesystem URI. Every `latkit data`
command runs here against a real S3 endpoint on loopback (moto's server, spoken to by pyarrow's AWS SDK client over
HTTP), from an empty working folder that must stay empty: nothing of an s3:// dataset may land on the local disk."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from conftest import small_onnx_models

moto_server = pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")

QUICK = ["--min-time", "0.05", "--max-time", "0.1", "--repeats", "5", "--quiet"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "latkit", "AWS_SECRET_ACCESS_KEY": "latkit", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud's metadata service for credentials


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(URI of a dataset in a fresh bucket, that bucket's filesystem); the server stops with the module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                               allow_bucket_creation=True)
        fs.create_dir("latkit-test")
        yield f"s3://latkit-test/d?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1", fs
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def models(tmp_path_factory, export_cache):
    return small_onnx_models(tmp_path_factory.mktemp("models"), range(4, 8), export_cache)


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    """The working folder of every command: it must stay empty."""
    return tmp_path_factory.mktemp("cwd")


def latkit(cwd, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def objects(fs, under="latkit-test/d") -> list:
    return sorted(i.path[len(under) + 1:] for i in fs.get_file_info(pafs.FileSelector(under, recursive=True))
                  if i.type == pafs.FileType.File)


def test_every_data_command_works_on_an_s3_dataset_and_writes_nothing_locally(s3, models, cwd, reg):
    uri, fs = s3
    r = latkit(cwd, "collect", "--models", models, "--devices", "loc", "--registry", reg.path, "--out", uri,
               "--rounds", "2", "--reference-every", "1", *QUICK)
    assert r.returncode == 0, r.stderr
    stored = objects(fs)
    assert sum(p.startswith("data/") for p in stored) >= 1 and any(p.startswith("_reference/data/") for p in stored)
    assert not [p for p in stored if p.startswith("_rounds/")]  # saved rounds pruned there too: only folders left

    r = latkit(cwd, "data", "show", uri, "--json")
    assert r.returncode == 0, r.stderr
    assert sum(g["rows"] for g in json.loads(r.stdout)) == 4

    r = latkit(cwd, "data", "card", uri, "--title", "Remote")
    assert r.returncode == 0, r.stderr
    card = fs.open_input_stream("latkit-test/d/README.md").read().decode()
    assert card.startswith("---\n") and "# Remote" in card and "config_name: reference" in card
    assert r.stdout.strip() == f"wrote {uri.split('?')[0]}/README.md?{uri.split('?')[1]}"

    r = latkit(cwd, "data", "retest", uri, "--n", "3", "--models", models, "--registry", reg.path, "--quiet")
    assert r.returncode == 0, r.stderr
    [stamp] = {p.split("/")[1] for p in objects(fs) if p.startswith("_retest/")}
    assert f"_retest/{stamp}/retest.json" in objects(fs)
    assert sum(p.startswith(f"_retest/{stamp}/data/") for p in objects(fs)) >= 1  # the rows timed again, there
    assert f"3 rows measured again into {uri.split('?')[0]}/_retest/{stamp}?" in r.stdout
    card = fs.open_input_stream("latkit-test/d/README.md").read().decode()  # refreshed: the card was there
    assert "## Test-retest" in card and f"config_name: retest-{stamp}" in card and "# Remote" in card

    r = latkit(cwd, "data", "plot", uri)
    assert r.returncode == 0, r.stderr
    assert "plots/custom_latency_hist.png" in objects(fs)
    assert fs.open_input_stream("latkit-test/d/plots/custom_latency_hist.png").read(8) == b"\x89PNG\r\n\x1a\n"

    r = latkit(cwd, "data", "compact", uri)
    assert r.returncode == 0, r.stderr
    r = latkit(cwd, "data", "show", uri, "--json")
    assert sum(g["rows"] for g in json.loads(r.stdout)) == 4  # every row kept by the compaction

    r = latkit(cwd, "data", "migrate", uri)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "works on a local folder" in r.stderr, r.stderr

    assert list(cwd.iterdir()) == []  # nothing of the s3:// dataset on the local disk


def test_measure_into_s3_skips_what_is_there_and_force_times_again(s3, models, cwd, reg):
    uri, fs = s3
    uri = uri.replace("/d?", "/m?")
    model = sorted(models.glob("*.onnx"))[0]
    runs = [latkit(cwd, "measure", model, "--device", "loc", "--registry", reg.path, "--out", uri, *QUICK, *extra)
            for extra in ((), (), ("--force",))]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert "not timed again" in runs[1].stdout and "not timed again" not in runs[2].stdout
    assert sum(g["rows"] for g in json.loads(latkit(cwd, "data", "show", uri, "--json").stdout)) == 2
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("name,limit", [("README.md", 4 << 20), ("_retest/20261207T000000Z/retest.json", 1 << 20)])
def test_an_s3_datasets_oversized_files_are_refused_in_one_line(s3, models, cwd, reg, name, limit):
    """A dataset from elsewhere is data: a card or retest figures past their size are not read into memory."""
    uri, fs = s3
    uri = uri.replace("/d?", "/big?")
    model = sorted(models.glob("*.onnx"))[0]
    assert latkit(cwd, "measure", model, "--device", "loc", "--registry", reg.path, "--out", uri,
                  *QUICK).returncode == 0
    with fs.open_output_stream(f"latkit-test/big/{name}") as f:
        f.write(b"#" * (limit + 1))
    r = latkit(cwd, "data", "card", uri)
    if name == "README.md":
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "larger than 4 MB" in r.stderr, r.stderr
    else:  # the card is written, its retest section says what was wrong
        assert r.returncode == 0, r.stderr
        card = fs.open_input_stream("latkit-test/big/README.md").read().decode()
        assert "## Test-retest" in card and "larger than 1 MB" in card
    fs.delete_dir("latkit-test/big")

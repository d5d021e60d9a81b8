"""Progress of the long commands goes to stderr, never stdout: `latkit: ...` log lines off a terminal, a rich
spinner on one, nothing with -q. And a missing extra is the first and only thing `collect --space` says."""
import os
import pty
import re
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latkit.collector.spaces import get_space
from conftest import ROOT, small_onnx_models

CLI = [sys.executable, "-m", "latkit.collector.cli"]


def latkit(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """60 nb201 archs timed on three made-up devices."""
    path = tmp_path_factory.mktemp("progress") / "table.parquet"
    archs = get_space("nb201").sample(60, np.random.default_rng(0))
    rows = [(a, d, 1.0 + i / 60 + k) for i, a in enumerate(archs) for k, d in enumerate(("d1", "d2", "d3"))]
    pq.write_table(pa.table({"space": ["nb201"] * len(rows), "arch": [r[0] for r in rows],
                             "device": [r[1] for r in rows], "latency_ms": [r[2] for r in rows]}), path)
    return path


def fit_args(table, tmp_path):
    return ["predictor", "fit", "--data", table, "--space", "nb201", "--device", "d1", "--budget", "20", "--model",
            "ridge", "--out", tmp_path / "m.latkit-model"]


def transfer_args(table):
    return ["predictor", "transfer", "--data", table, "--space", "nb201", "--source", "d1,d2", "--target", "d3",
            "--source-samples", "10", "--target-samples", "3", "--seeds", "2", "--no-gnn"]


def test_fit_logs_its_rounds_on_stderr_and_only_the_result_on_stdout(table, tmp_path):
    r = latkit(*fit_args(table, tmp_path))
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"nb201 on d1: spearman=\S+, .*model=ridge; saved \S+m\.latkit-model\n", r.stdout), r.stdout
    err = r.stderr.splitlines()
    assert err[0].startswith("latkit: predictor fit: round 1: 13 training archs (±10 % on the last batch: ")
    assert err[-1] == "latkit: predictor fit: fitting ridge (5 bagged members) on 20 archs" and all(e.startswith("latkit: ") for e in err)
    assert "\x1b[" not in r.stderr
    q = latkit("-q", *fit_args(table, tmp_path))
    assert q.returncode == 0 and q.stderr == "" and q.stdout.startswith("nb201 on d1: spearman=")


def test_transfer_logs_each_seed(table):
    r = latkit(*transfer_args(table))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "latkit: predictor transfer: seed 1/2: pretraining on 2 source device(s), 60 archs",
        "latkit: predictor transfer: seed 1/2: few-shot fit of 1 target device(s) on 3 samples each",
        "latkit: predictor transfer: seed 2/2: pretraining on 2 source device(s), 60 archs",
        "latkit: predictor transfer: seed 2/2: few-shot fit of 1 target device(s) on 3 samples each"]
    assert "mean spearman" in r.stdout and "latkit:" not in r.stdout
    q = latkit(*transfer_args(table), "-q")
    assert q.returncode == 0 and q.stderr == "" and "mean spearman" in q.stdout


def test_a_stopped_transfer_speaks_of_no_rows(table):
    """Ctrl-C stops `predictor transfer` in one line, exit 130; it times nothing, so it says nothing of rows kept."""
    args = transfer_args(table)
    args[args.index("--seeds") + 1] = "100"
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert "seed 1/100" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "latkit: interrupted by SIGINT", err


def test_import_help_logs_each_table(table, tmp_path):
    folder = tmp_path / "help"
    folder.mkdir()
    for name in ("a_latency.parquet", "b_latency.parquet"):
        (folder / name).write_bytes(table.read_bytes())
    r = latkit("data", "import-help", folder, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"imported 180 rows into {tmp_path / 'out'}\n"  # the same rows twice: imported once
    assert r.stderr.splitlines() == ["latkit: data import-help: 1/2: a_latency.parquet",
                                     "latkit: data import-help: 2/2: b_latency.parquet"]
    q = latkit("data", "import-help", "-q", table, tmp_path / "out2")
    assert q.returncode == 0 and q.stderr == "" and q.stdout == f"imported 180 rows into {tmp_path / 'out2'}\n"


def on_a_terminal(args, columns: int, timeout: float) -> tuple:
    """(exit code, what was drawn, stdout) of `latkit ARGS` with stderr a terminal (a pty) and stdout a pipe."""
    master, slave = pty.openpty()
    p = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT,
                         env=dict(os.environ, TERM="xterm", COLUMNS=str(columns)), text=True)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the last writer of the terminal is gone
            break
        if not chunk:
            break
        drawn += chunk
    out = p.stdout.read()
    code = p.wait(timeout=timeout)
    os.close(master)
    return code, drawn, out


def test_on_a_terminal_the_progress_is_drawn_on_stderr_only(table, tmp_path):
    """stderr a terminal, stdout a pipe (`latkit ... > result.txt`): rich draws on the terminal, the pipe gets
    the result alone."""
    code, drawn, out = on_a_terminal(fit_args(table, tmp_path), columns=120, timeout=60)
    assert code == 0
    assert out.startswith("nb201 on d1: spearman=") and len(out.splitlines()) == 1 and "\x1b" not in out
    assert b"\x1b[" in drawn and b"predictor fit" in drawn and b"latkit: predictor fit" not in drawn


def collect_args(tmp_path, export_cache) -> list:
    """Three small models timed in 2 rounds: each becomes a row only after round 2."""
    (tmp_path / "models").mkdir(parents=True)
    small_onnx_models(tmp_path / "models", (4, 8, 16), export_cache)
    return ["collect", "--models", tmp_path / "models", "--devices", "local", "--out", tmp_path / "d", "--rounds", "2",
            "--no-reference", "--repeats", "3", "--min-time", "0.05", "--max-time", "0.1"]


def test_collect_says_which_round_it_times_before_the_first_row(tmp_path, export_cache):
    """A model is a row after its last round, so a window's rows come late: off a terminal each round gets a line,
    the first before any row; -q says nothing."""
    r = latkit(*collect_args(tmp_path, export_cache))
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    first = err.index("latkit: local: round 1 of 2, 3 model(s); a model is stored after its last round")
    second = err.index("latkit: local: round 2 of 2, 3 model(s)")
    rows = [i for i, x in enumerate(err) if re.match(r"latkit: local: \d/3 w\d+\.onnx: [\d.]+ ms$", x)]
    assert len(rows) == 3 and first < second < min(rows), err
    q = latkit(*collect_args(tmp_path / "q", export_cache), "-q")
    assert q.returncode == 0 and q.stderr == "", q.stderr


def test_on_a_terminal_the_collect_bar_shows_the_round(tmp_path, export_cache):
    """The device's bar reads the round at every refresh: the first rows come only in round 2."""
    code, drawn, out = on_a_terminal(collect_args(tmp_path, export_cache), columns=160, timeout=120)
    assert code == 0, drawn[-2000:]
    assert b"round 1 of 2, 3 model(s)" in drawn and b"latkit: local: round" not in drawn, drawn[-2000:]
    assert "local" in out and "\x1b" not in out, out  # the result table, no control codes


def test_collect_space_without_torch_says_so_first_and_only(tmp_path):
    """A core install (no torch): the one line naming the extra, before any other output and any folder made."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from latkit.collector.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "collect", "--space", "nb201", "--n", "2", "--devices", "local",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("latkit: error: latkit collect --space needs torch, which is not installed here; install it "
                        "with pip install 'latkit[export]'\n")
    assert not (tmp_path / "out").exists()

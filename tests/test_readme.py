"""README.md is true: its benchmark tables are what the benchmark JSON renders to (scripts/render_readme.py), never
figures pasted by hand, and every fenced block in it runs (issue 20), or says in the README why it cannot."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT


def test_readme_tables_match_the_benchmark_json():
    r = subprocess.run([sys.executable, "scripts/render_readme.py", "--check"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_transfer_table_has_every_published_task_beside_its_baselines():
    """Every task of published.json is a row of the README's transfer table, with the published numbers."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- table: scripts/bench_predictor.json#transfer -->")[1].split("<!-- end table -->")[0]
    rows = {line.split("|")[1].strip(): line for line in block.splitlines() if line.startswith("| ")}
    for task, paper in json.loads((ROOT / "datasets" / "help" / "published.json").read_text())["tasks"].items():
        assert task in rows, task
        for method in ("NASFLAT", "MultiPredict", "HELP"):
            assert f"{paper[method]:.3f}" in rows[task], (task, method)


# ---------------------------------------------------------------------------------------------------------------
# The README is executable (issue 20): every fenced block of README.md runs here, or says in the README why not.
#
# Each block is preceded by a marker, an HTML comment that GitHub does not render but a reader of the source sees:
#
#   <!-- readme: run local -->                    run it; only the built-in `local` device is needed
#   <!-- readme: run fleet; pi4=dev0 -->          run it; the README's device pi4 is the loopback sshd device dev0
#   <!-- readme: run local; --n 200 -> --n 4 -->  run it with this option value (an option the block shows)
#   <!-- readme: run local; given my_module -->   a Python block: `my_module` is defined first (GIVENS below)
#   <!-- readme: run local; creates my-data/x --> paths (globs, comma-separated) the README says the block writes
#   <!-- readme: run local; prints saved x -->    text the README says the block prints (on stdout)
#   <!-- readme: skip: needs an NVIDIA GPU -->    not run, with the reason (a reason is required)
#   <!-- readme: data: an ssh config -->          not a command (a config file's text)
#
# Blocks run in README order in one sandbox, as a reader would type them one after the other (a block may use
# what an earlier one wrote): a temp working dir, a HOME beside it, LATKIT_REGISTRY and LATKIT_CACHE inside the
# sandbox, and this checkout's `latkit` first on PATH. The placeholders the README uses (model.onnx, model.tflite,
# my-models/, datasets/) are made there first, from tiny real torch networks and a copy of datasets/.
# A README address (`--host 192.0.2.7`) is never contacted: only loopback devices are.
# ---------------------------------------------------------------------------------------------------------------
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- readme: (?P<body>.*?) -->$", re.S)
BIN = Path(sys.executable).parent  # the venv the blocks run in (python, ray, ...)

# A command of the README that fails today because of a bug being fixed elsewhere: {substring of the command:
# the bug}. The block still runs; the command must fail (strict: once it passes, remove it from here).
KNOWN_BUGS: dict = {}

# Names a Python block uses without defining them, made by a few lines run before the block (`given NAME`).
GIVENS = {
    "my_module": "import torch\n"
                 "my_module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(),\n"
                 "                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()\n",
    # 40 NB201 archs and their latencies, from the dataset the repository ships
    "archs": "from latkit.collector import Store as _Store\n"
             f"_rows = _Store({str(ROOT / 'datasets' / 'local-cpu-nb201-fbnet')!r}).read().to_pylist()\n"
             "_rows = sorted((r for r in _rows if r['space'] == 'nb201' and r['status'] == 'ok'),\n"
             "               key=lambda r: r['arch'])[:40]\n"
             "archs = [r['arch'] for r in _rows]\n",
    "latency_ms": "latency_ms = [r['latency_ms'] for r in _rows]\n",
    # the readers a block calls by their module names
    "pyarrow": "import pyarrow.dataset\nimport pyarrow.parquet\n",
    "duckdb": "import duckdb\n",
    "polars": "import polars\n",
    "datasets": "import datasets\n",
    "pandas": "import pandas\n",
}


@dataclass
class Block:
    """One fenced block of README.md and what its marker says about it."""
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # the marker's body, None when the block has none
    section: str
    id: str = ""
    how: str = ""  # run / skip / data
    where: str = ""  # local / fleet, for run blocks
    reason: str = ""  # for skip and data
    sizes: list = field(default_factory=list)  # (as written, as run)
    devices: dict = field(default_factory=dict)  # README name -> loopback device name
    givens: list = field(default_factory=list)
    creates: list = field(default_factory=list)
    prints: list = field(default_factory=list)  # text the README says the block's output holds

    def parse_marker(self) -> None:
        if self.marker is None:
            return
        if self.marker.startswith(("skip", "data")):  # the rest is the reason, `;` and all
            self.how, _, self.reason = self.marker.partition(":")
            self.how, self.reason = self.how.strip(), self.reason.strip()
            return
        head, *options = [part.strip() for part in self.marker.split(";")]
        self.how, _, self.where = head.partition(" ")
        for opt in options:
            if "->" in opt:
                self.sizes.append(tuple(s.strip() for s in opt.split("->")))
            elif opt.startswith("given "):
                self.givens += [g.strip() for g in opt[len("given "):].split(",")]
            elif opt.startswith("creates "):
                self.creates += [c.strip() for c in opt[len("creates "):].split(",")]
            elif opt.startswith("prints "):
                self.prints.append(opt[len("prints "):])
            elif re.fullmatch(r"[\w-]+=dev\d", opt):
                name, dev = opt.split("=")
                self.devices[name] = dev
            else:
                raise ValueError(f"README.md:{self.line}: unknown marker option {opt!r}")


def marker_before(lines: list, fence: int) -> str:
    """The comment that ends on the line just before the fence (it may span lines), as one line."""
    end = fence - 1
    if end < 0 or not lines[end].rstrip().endswith("-->"):
        return ""
    start = end
    while start > 0 and not lines[start].startswith("<!--") and lines[start - 1].strip():
        start -= 1
    return " ".join(line.strip() for line in lines[start:end + 1])


def readme_blocks(text: str | None = None) -> list:
    """Every fenced block of the README with the marker on the line just before its fence."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks, section, i, seen = [], "top", 0, {}
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"README.md:{i + 1}: a ``` fence that is never closed")
            m = MARKER.match(marker_before(lines, i))
            b = Block(line=i + 1, lang=line[3:].strip(), text="\n".join(lines[i + 1:end]),
                      marker=m["body"] if m else None, section=section)
            seen[section] = seen.get(section, 0) + 1
            b.id = section if seen[section] == 1 else f"{section}-{seen[section]}"
            b.parse_marker()
            blocks.append(b)
            i = end
        i += 1
    return blocks


def commands(block: Block) -> list:
    """The block's shell commands, one per line (backslash continuations joined), sizes applied."""
    text = block.text
    for written, run in block.sizes:
        # whole option values only: `--n 100 -> --n 1` leaves `--n 1000` alone
        text, n = re.subn(re.escape(written) + r"(?![\w.])", run, text)
        assert n, f"{block.id}: the marker resizes {written!r}, which the block does not show"
    text = text.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


BLOCKS = readme_blocks()


def test_every_block_runs_or_says_why_not():
    """A block with no marker, an unknown kind, or a skip without its reason fails here: nothing in the README
    goes unchecked silently."""
    problems = []
    for b in BLOCKS:
        if b.marker is None:
            problems.append(f"README.md:{b.line}: ```{b.lang} block has no <!-- readme: ... --> marker before it")
        elif b.how in ("skip", "data") and not b.reason:
            problems.append(f"README.md:{b.line}: '{b.how}' needs a reason ('<!-- readme: {b.how}: why -->')")
        elif b.how == "run" and b.where not in ("local", "fleet"):
            problems.append(f"README.md:{b.line}: 'run' must say 'local' or 'fleet', not {b.where!r}")
        elif b.how == "run" and b.lang not in ("bash", "python", ""):
            problems.append(f"README.md:{b.line}: a ```{b.lang} block cannot be run (bash, python or bare only)")
        elif b.how not in ("run", "skip", "data"):
            problems.append(f"README.md:{b.line}: unknown marker {b.marker!r}")
    assert not problems, "\n".join(problems)
    assert sum(b.how == "run" for b in BLOCKS) >= 8  # the parser found the README's blocks


def test_the_marker_check_catches_an_unmarked_block_and_a_bare_skip():
    """The parser itself: a block without a marker has none, a skip keeps its reason, options are read."""
    text = ("# A\n```bash\nlatkit x\n```\n"
            "<!-- readme: skip: needs a GPU; and a board -->\n```bash\nlatkit y\n```\n"
            "## B c\n<!-- readme: run fleet; pi4=dev0;\n     --n 9 -> --n 1; creates out/x -->\n"
            "```\nlatkit z --n 9\n```\n")
    a, b, c = readme_blocks(text)
    assert a.marker is None and a.id == "a"
    assert (b.how, b.reason, b.id) == ("skip", "needs a GPU; and a board", "a-2")
    assert (c.how, c.where, c.devices, c.sizes, c.creates, c.id) == (
        "run", "fleet", {"pi4": "dev0"}, [("--n 9", "--n 1")], ["out/x"], "b-c")
    assert commands(c) == ["latkit z --n 1"]


def test_a_failing_command_fails_its_block_and_a_fixed_bug_is_noticed(tmp_path, monkeypatch):
    """The runner checks every command's exit code, not just the block's last one, and `--json` output; a
    KNOWN_BUGS entry whose command passes fails too, so the list cannot outlive the bug."""
    box = {"work": tmp_path, "env": dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"), "seconds": {}}
    with pytest.raises(AssertionError, match="exit 2"):
        run_shell(Block(1, "bash", "latkit data show no-such-data\ntrue", "run local", "t"), box, {})
    with pytest.raises(json.JSONDecodeError):
        run_shell(Block(1, "bash", "echo not-json --json", "run local", "t"), box, {})
    monkeypatch.setitem(KNOWN_BUGS, "true", "bug 0")
    with pytest.raises(AssertionError, match="passes now"):
        run_shell(Block(1, "bash", "true", "run local", "t"), box, {})
    assert run_shell(Block(1, "bash", "false && true", "run local", "t"), box, {}) == ("", ["false && true: bug 0"])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, export_cache):
    """A working dir, a HOME, a registry and an export cache of its own, with the README's placeholder models
    (model.onnx / model.tflite: a tiny CNN; my-models/: three small ONNX models) and a copy of datasets/."""
    import torch
    from latkit.collector import export
    from conftest import small_onnx_models, tiny_cnn
    root = tmp_path_factory.mktemp("readme")
    work, home = root / "work", root / "home"
    (work / "my-models").mkdir(parents=True)
    home.mkdir()
    x = torch.randn(1, 3, 32, 32)
    for fmt in ("onnx", "tflite"):
        shutil.copy(export(tiny_cnn(), (x,), fmt, arch="tiny_cnn", cache_dir=export_cache).path, work / f"model.{fmt}")
    small_onnx_models(work / "my-models", (4, 8, 12), export_cache)
    # blocks that name datasets/... run as in a checkout, on a copy: nothing they do writes into the repository
    shutil.copytree(ROOT / "datasets", work / "datasets")
    # `latkit` is this checkout's CLI run as a module (as pip's console script does: a wrapper whose import
    # runs main() would run it again in every spawned export worker)
    (root / "bin").mkdir()
    (root / "bin" / "latkit").write_text(f'#!/bin/sh\nexec {sys.executable} -m latkit.collector.cli "$@"\n')
    (root / "bin" / "latkit").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("LATKIT_DEBUG", "LATKIT_REGISTRY", "PYTHONPATH")}
    env.update(HOME=str(home), LATKIT_REGISTRY=str(home / ".config" / "latkit" / "devices.toml"),
               LATKIT_CACHE=str(root / "cache"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               PATH=os.pathsep.join([str(root / "bin"), str(BIN), env["PATH"]]))
    return {"work": work, "home": home, "env": env, "seconds": {}}


def loopback(block: Block, request, sandbox) -> dict:
    """The loopback devices standing for the README's device names: each is registered under the README's name
    unless the block adds it itself (then its `device add` gets the loopback address, see device_add)."""
    from latkit.collector import Registry, add_device
    fleet = {d.name: d for d in request.getfixturevalue("fleet")}
    ssh = sandbox["home"] / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    key = ssh / "id_ed25519"  # the key the README's `device add` names
    if not key.exists():
        shutil.copy(fleet["dev0"].key, key)
        key.chmod(0o600)
    reg = Registry(sandbox["env"]["LATKIT_REGISTRY"])
    known = {d.name for d in reg.devices()}
    for name, dev in block.devices.items():
        d = fleet[dev]
        if name not in known and not re.search(rf"latkit device add {re.escape(name)}\b", block.text):
            add_device(name, d.host, d.port, d.user, d.key, d.python, d.workdir, ["loopback"],
                       trust_host_key=True, registry=reg, lease=f"{d.dir}/lease")
    return {name: fleet[dev] for name, dev in block.devices.items()}


def device_add(cmd: str, devices: dict) -> str:
    """`latkit device add NAME --host ADDRESS --user U ...` for a README device: the loopback device's host,
    port, user, Python, workdir and lease instead of the README's address (only loopback is ever contacted)."""
    m = re.match(r"latkit device add ([\w-]+) ", cmd)
    if not m or m[1] not in devices:
        return cmd
    d, cmd = devices[m[1]], re.sub(r"\s+#\s.*$", "", cmd)  # its comment would swallow what is added
    for opt, value in (("--host", d.host), ("--user", d.user)):
        cmd = re.sub(rf"{opt} \S+", f"{opt} {value}", cmd)
    return f"{cmd} --port {d.port} --python {d.python} --workdir {d.workdir} --lease {d.dir}/lease"


def check_json(cmd: str, stdout: str, cwd: Path) -> None:
    """`--json` makes one JSON document: on stdout, or in the file named after it."""
    args = shlex.split(cmd.split(">")[0], comments=True)
    if "--json" not in args:
        return
    i = args.index("--json")
    target = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else None
    if target is not None and (cwd / target).is_file():
        json.loads((cwd / target).read_text())
    else:
        json.loads(stdout)


def run_shell(block: Block, sandbox, devices: dict) -> tuple:
    """Each command on its own, in the sandbox; returns their stdout and the known bugs that showed."""
    shown, stdout = [], ""
    for cmd in commands(block):
        cmd = device_add(cmd, devices)
        t0 = time.monotonic()
        r = subprocess.run(["bash", "-c", "set -o pipefail\n" + cmd], cwd=sandbox["work"], env=sandbox["env"],
                           capture_output=True, text=True, timeout=600)
        sandbox["seconds"][cmd] = time.monotonic() - t0
        print(f"{sandbox['seconds'][cmd]:6.1f} s  exit {r.returncode}  {cmd}")
        stdout += r.stdout
        bug = next((why for part, why in KNOWN_BUGS.items() if part in cmd), None)
        if bug and r.returncode != 0:
            shown.append(f"{cmd}: {bug}")
            continue
        assert not bug, f"{cmd!r} passes now: remove it from KNOWN_BUGS ({bug})"
        assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
        check_json(cmd, r.stdout, sandbox["work"])
    return stdout, shown


def run_python(block: Block, sandbox) -> str:
    """The block as a script, after the lines that define the names it is given."""
    script = sandbox["work"] / f"_readme_{block.id}.py"
    script.write_text("".join(GIVENS[g] for g in block.givens) + block.text + "\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, script.name], cwd=sandbox["work"], env=sandbox["env"], capture_output=True,
                       text=True, timeout=600)
    sandbox["seconds"][f"python block {block.id}"] = time.monotonic() - t0
    assert r.returncode == 0, f"{block.id}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.how == "run"], ids=lambda b: b.id)
def test_readme_block(block, sandbox, request):
    """The block runs as the README shows it (sizes only through the options it shows), every command exits 0
    and writes and prints what the marker says; `--json` gives one JSON document."""
    devices = loopback(block, request, sandbox) if block.where == "fleet" else {}
    stdout, shown = (run_python(block, sandbox), []) if block.lang == "python" else run_shell(block, sandbox, devices)
    for path in block.creates:  # relative to the working dir, or to HOME (~/...)
        where, pattern = (sandbox["home"], path[2:]) if path.startswith("~/") else (sandbox["work"], path)
        assert list(where.glob(pattern)), f"{block.id}: the README says it writes {path}; it is not there"
    for text in block.prints:
        assert text in stdout, f"{block.id}: the README says it prints {text!r}; it printed:\n{stdout[-3000:]}"
    if shown:
        pytest.xfail("; ".join(shown))

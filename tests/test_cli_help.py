"""The CLI explains itself: every leaf command's --help ends with examples that parse and has a help text for every
option; global flags work before the command; a typo gets a "did you mean"; completion scripts are valid shell."""
import argparse
import json
import shlex
import shutil
import subprocess
import sys

import pytest

from latkit.collector.cli import build_parser
from latkit.collector.cliargs import EXAMPLES, command_of
from conftest import ROOT

DATA = ROOT / "datasets" / "local-cpu-nb201-fbnet"


def latkit(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def leaves(p):
    """Every leaf command's parser, walking the subcommand tree."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [p]
    return [leaf for s in subs for child in s.choices.values() for leaf in leaves(child)]


LEAVES = leaves(build_parser())


def test_the_walk_finds_every_command():
    names = {command_of(p) for p in LEAVES}
    assert {"measure", "collect", "doctor", "data show", "predictor fit", "device add"} <= names
    assert len(names) == len(LEAVES) >= 20
    assert set(EXAMPLES) == names  # no examples left behind for a command that is gone


@pytest.mark.parametrize("leaf", LEAVES, ids=[command_of(p) for p in LEAVES])
def test_every_leaf_has_examples_that_parse_and_help_for_every_option(leaf):
    name = command_of(leaf)
    lines = leaf.format_help().rstrip().splitlines()
    tail = [line.strip() for line in lines[lines.index("examples:") + 1:]] if "examples:" in lines else []
    assert 1 <= len(tail) <= 2 and all(t.startswith(f"latkit {name} ") or t == f"latkit {name}" for t in tail), \
        f"latkit {name} --help must end with one or two examples starting `latkit {name} `: {tail}"
    for example in tail:
        args = build_parser().parse_args(shlex.split(example)[1:])  # exits (SystemExit) if it does not parse
        assert hasattr(args, "func")
    bare = [a.dest for a in leaf._actions if a.help in (None, "", argparse.SUPPRESS)]
    assert not bare, f"latkit {name}: options without a help text: {bare}"
    assert leaf.description, f"latkit {name} --help has no description"


def test_help_output_ends_with_the_examples():
    r = latkit("data", "show", "--help")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.rstrip().splitlines()[-2:] == ["  latkit data show my-data", "  latkit data show my-data --json"]


@pytest.mark.parametrize("argv", [[], ["data"], ["predictor"]])
def test_bare_command_prints_its_help(argv):
    """`latkit` (or a group alone) prints what there is to run on stdout and exits 0: a request for orientation,
    not a failure, as docker, kubectl and pip do."""
    r = latkit(*argv)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith(f"usage: latkit{''.join(' ' + a for a in argv)} ") and "commands:" in r.stdout
    assert ("collect" if not argv else "show" if argv == ["data"] else "transfer") in r.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_flags_before_or_after_the_command(where):
    def run(*flags):
        return latkit(*flags, "data", "show", DATA) if where == "before" else latkit("data", "show", DATA, *flags)
    r = run("--json")
    assert r.returncode == 0, r.stderr
    assert {g["space"] for g in json.loads(r.stdout)} == {"nb201", "fbnet"}
    r = run("-q", "--json")
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)
    r = run("-q")
    assert r.returncode == 0 and "nb201" in r.stdout and "{" not in r.stdout


@pytest.mark.parametrize("argv,words", [
    (["--json", "predictor", "fit", "--data", "d", "--space", "nb201", "--device", "x"],
     "latkit predictor fit's --json takes a file (write the metrics as JSON here); give --json FILE after the command"),
    (["--json", "predictor", "transfer", "--data", "d", "--space", "nb201", "--source", "a", "--target", "b"],
     "latkit predictor transfer's --json takes a file"),
    (["--json", "data", "compact", "d"], "latkit data compact has no JSON output; leave out --json"),
    (["-q", "data", "show", "d", "-v"], "-q/--quiet and -v/--verbose contradict each other"),
    (["colect"], "unknown command 'colect'; did you mean 'collect'?"),
    (["data", "shwo", "d"], "unknown command 'data shwo'; did you mean 'data show'?"),
    (["predictor", "fti"], "unknown command 'predictor fti'; did you mean 'predictor fit'?"),
    (["frobnicate"], "unknown command 'frobnicate'; choose one of measure, collect, doctor, device"),
    (["device", "probe", "loacl"], "unknown device 'loacl'; did you mean 'local'? (known devices: local"),
    (["device", "show", "lcal"], "unknown device 'lcal'; did you mean 'local'?"),
    (["doctor", "--devices", "local,lcoal"], "unknown device 'lcoal'; did you mean 'local'?"),
])
def test_one_line_refusals(argv, words):
    r = latkit(*argv)
    assert r.returncode == 2 and r.stdout == ""
    line, = r.stderr.strip().splitlines()
    assert line.startswith("latkit: error: ") and words in line, line


def test_the_exact_did_you_mean_line():
    r = latkit("colect")
    assert r.stderr == "latkit: error: unknown command 'colect'; did you mean 'collect'?\n"


def test_mistyped_device_in_measure_and_collect(tmp_path, artifacts):
    model = tmp_path / "m.onnx"
    model.write_bytes(artifacts["onnx"].path.read_bytes())
    reg = tmp_path / "reg.toml"
    reg.write_text(f'[devices.pi4]\ntransport = "local"\nlease = "{tmp_path}/lease"\n')
    for argv in (["measure", model, "--device", "pi5"], ["collect", "--models", model, "--devices", "local,pi5"]):
        r = latkit(*argv, "--registry", reg, "--out", tmp_path / "out")
        line, = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "unknown device 'pi5'; did you mean 'pi4'? (known devices: local, pi4" in line
    r = latkit("device", "remove", "pi-4", "--registry", reg)
    assert r.returncode == 2 and r.stderr == ("latkit: error: no registered device 'pi-4'; did you mean 'pi4'? "
                                              "(see latkit device list)\n")
    assert not (tmp_path / "out").exists()


def test_bash_completion_is_valid_and_names_the_commands(tmp_path):
    r = latkit("--print-completion", "bash")
    assert r.returncode == 0 and r.stderr == ""
    script = tmp_path / "latkit.bash"
    script.write_text(r.stdout)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    for word in ("measure", "collect", "doctor", "import-help", "--devices", "--print-completion"):
        assert word in r.stdout
    # sourced, it completes the command words as bash would
    probe = (f"source {shlex.quote(str(script))}; COMP_WORDS=(latkit da); COMP_CWORD=1; COMP_LINE='latkit da'; "
             "COMP_POINT=${#COMP_LINE}; _shtab_latkit latkit da latkit; echo \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["data"], done.stdout + done.stderr


def test_zsh_completion_names_the_commands(tmp_path):
    r = latkit("--print-completion", "zsh")
    assert r.returncode == 0 and "#compdef latkit" in r.stdout and "import-help" in r.stdout
    if shutil.which("zsh"):
        script = tmp_path / "_latkit"
        script.write_text(r.stdout)
        assert subprocess.run(["zsh", "-n", str(script)]).returncode == 0
    r = latkit("--print-completion", "fish")
    assert r.returncode == 2 and "argument --print-completion: invalid choice: 'fish'" in r.stderr

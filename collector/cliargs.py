"""The argparse side of the `latkit` CLI: its error contract, "did you mean" for a mistyped command, the global
-q/-v/--json flags (before or after the command), each leaf command's examples, and shell completion.

Kept apart from the command modules (cli_*.py) so they stay about what each command does, and so one test
(tests/test_cli_help.py) can walk the parser tree: every leaf command must have examples that parse and a
help text for every option, or the test names the command that lacks them.
"""
from __future__ import annotations

import argparse
import sys

from .errors import closest

# Each leaf command's examples, shown at the end of its --help (and checked to parse by the tests). A command
# added to build_parser without an entry here fails tests/test_cli_help.py.
EXAMPLES = {
    "measure": ["latkit measure model.onnx --threads 2 --energy --out my-data",
                "latkit measure model.tflite --device pi4 --cores 2,3 --json"],
    "collect": ["latkit collect --space nb201 --n 200 --devices local,pi4 --out my-data",
                "latkit collect --models models/ --devices pi4 --rounds 2 -q"],
    "doctor": ["latkit doctor",
               "latkit doctor --devices local,pi4 --json"],
    "device add": ["latkit device add pi4 --host 192.168.1.7 --user pi --trust-host-key",
                   "latkit device add board --host board-alias --ssh-config ~/.ssh/config --tags arm"],
    "device list": ["latkit device list",
                    "latkit device list --no-check --json"],
    "device show": ["latkit device show pi4"],
    "device probe": ["latkit device probe local"],
    "device remove": ["latkit device remove pi4"],
    "predictor fit": ["latkit predictor fit --data my-data --space nb201 --device pi4 --target energy_mj",
                      "latkit predictor fit --data my-data --space onnx --device pi4 --models my-models/"],
    "predictor transfer": ["latkit predictor transfer --data my-data --space nb201 --source local --target pi4",
                           "latkit predictor transfer --data my-data --space nb201 --source local,gpu "
                           "--target pi4 --seeds 1 --no-gnn"],
    "predictor build": ["latkit predictor build --space nb201 --device pi4 --data my-data"],
    "predictor adapt": ["latkit predictor adapt --device pi4 --space nb201 --n 20",
                        "latkit predictor adapt --model my-data/models/onnx-local.latkit-model --device pi4 "
                        "--file few-models/"],
    "predictor predict": ["latkit predictor predict --model nb201-pi4.latkit-model --file archs.txt --std",
                          "latkit predictor predict --model my-data/models/onnx-pi4.latkit-model --file my.onnx "
                          "my-models/ --std --batch-size 8 --json"],
    "data show": ["latkit data show my-data",
                  "latkit data show my-data --json"],
    "data card": ["latkit data card my-data --title 'NB201 on a Pi 4'"],
    "data import-help": ["latkit data import-help help-data",
                         "latkit data import-help datasets/help/nb201_latency.parquet help-data"],
    "data retest": ["latkit data retest my-data --n 50"],
    "data schema": ["latkit data schema --json"],
    "data compact": ["latkit data compact my-data"],
    "data migrate": ["latkit data migrate old-data"],
    "data plot": ["latkit data plot my-data --out plots"],
}


class Parser(argparse.ArgumentParser):
    """argparse with latkit's error contract: one line on stderr, exit 2 (argparse prints usage too), and a
    "did you mean" for a mistyped command instead of the whole list of choices."""

    def error(self, message):
        hint = "" if "did you mean" in message else f" (see {self.prog} --help)"
        self.exit(2, f"latkit: error: {message}{hint}\n")

    def _check_value(self, action, value):
        """A command word that is not one: name it with its group (`data shwo`) and the closest command."""
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            group = self.prog.split(" ", 1)[1] + " " if " " in self.prog else ""
            inner = [f"'{group}{name} {value}'" for name, sub in action.choices.items()  # `predict`: a group's
                     for a in sub._actions if isinstance(a, argparse._SubParsersAction) and value in a.choices]
            close = closest(value, action.choices)
            raise argparse.ArgumentError(None, f"unknown command '{group}{value}'" + (
                f"; did you mean {' or '.join(inner)}?" if inner else f"; did you mean '{group}{close}'?" if close
                else f"; choose one of {', '.join(action.choices)}"))
        super()._check_value(action, value)


class _Completion(argparse.Action):
    """`--print-completion bash|zsh`: the completion script shtab writes from the parser, then exit 0."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, choices=("bash", "zsh"), default=argparse.SUPPRESS, metavar="SHELL",
                         help="print a completion script for bash or zsh and exit (e.g. latkit --print-completion "
                              "bash > ~/.local/share/bash-completion/completions/latkit)")

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            import shtab
        except ImportError:
            parser.exit(2, "latkit: error: --print-completion needs shtab, which is not installed here; install it "
                           "with pip install shtab\n")
        sys.stdout.write(shtab.complete(parser, shell=values))
        parser.exit(0)


def add_globals(p: argparse.ArgumentParser) -> None:
    """The flags that may come before the command (`latkit -q data show D`); each leaf takes -q/-v (and --json
    where it prints JSON) after it too. Their own dests, because a subcommand's defaults would overwrite
    these; merge_globals joins them."""
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", dest="verbose_global", action="store_true",
                      help="debug lines on stderr; the same as -v after the command")
    talk.add_argument("-q", "--quiet", dest="quiet_global", action="store_true",
                      help="no progress on stderr, only warnings and errors; the same as -q after the command")
    p.add_argument("--json", dest="json_global", action="store_true",
                   help="one JSON document on stdout, for commands with a --json flag; the same as --json after it")
    p.add_argument("--print-completion", action=_Completion)


def parser_of(p: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the command `args` came from: a leaf (`data show`), or a group or the top one where the
    command words stop short."""
    while True:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        word = getattr(args, sub.dest, None) if sub else None
        if word is None:
            return p
        p = sub.choices[word]


def command_of(parser: argparse.ArgumentParser) -> str:
    """A parser's command words, e.g. `data show` for the parser whose prog is `latkit data show`."""
    return parser.prog.split(" ", 1)[1] if " " in parser.prog else ""


def merge_globals(p: argparse.ArgumentParser, args) -> None:
    """Give the flags before the command the meaning they have after it. --json before a command whose --json
    takes a file (predictor fit, transfer) or that has none is refused: it would not do what it says."""
    leaf = parser_of(p, args)
    quiet = getattr(args, "quiet", False) or args.quiet_global
    verbose = getattr(args, "verbose", False) or args.verbose_global
    if quiet and verbose:
        leaf.error("-q/--quiet and -v/--verbose contradict each other; give one")
    args.quiet, args.verbose = quiet, verbose
    if args.json_global and hasattr(args, "func"):
        flag = next((a for a in leaf._actions if "--json" in a.option_strings), None)
        name = f"latkit {command_of(leaf)}"
        if flag is None:
            leaf.error(f"{name} has no JSON output; leave out --json")
        if not isinstance(flag, argparse._StoreTrueAction):
            leaf.error(f"--json before the command asks for JSON on stdout, but {name}'s --json takes a file "
                       f"({flag.help}); give --json FILE after the command")
        args.json = True
    for k in ("quiet_global", "verbose_global", "json_global"):
        delattr(args, k)


class _Formatter(argparse.HelpFormatter):
    """argparse's help, but text of several lines (the examples) is kept line by line instead of refilled."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def finish(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Each command's --help: its one-line help as the description and, for a leaf, its EXAMPLES as the epilog."""
    for sub in (a for a in p._actions if isinstance(a, argparse._SubParsersAction)):
        helps = {c.dest: c.help for c in sub._choices_actions}
        for name, child in sub.choices.items():
            child.description = child.description or helps.get(name)
            child.formatter_class = _Formatter
            finish(child)
            examples = EXAMPLES.get(command_of(child))
            if examples:
                child.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return p

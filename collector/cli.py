"""`latkit` command line: a thin layer over collector.api, one module per command group.

The contract scripts rely on: results on stdout (one JSON document with --json), progress and messages on
stderr (bars on a terminal, log lines otherwise; -q quiet, -v verbose). Every failure is one line on stderr,
`latkit: error: ...`, naming the option, file or device; exit 2 when the command was wrong (checked before
any exporting, timing or training), 1 when valid work failed (a device, a model, an export), 130 / 143 on
SIGINT / SIGTERM. A traceback appears only with LATKIT_DEBUG=1.

The commands: cli_measure.py (measure, collect), cli_doctor.py, cli_device.py, cli_predictor.py, cli_data.py,
each with its `add_*` parser functions; their shared options in cli_common.py; the argparse side (error
contract, global flags, examples, completion) in cliargs.py.
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import re
import signal
import sys
import traceback

from . import cli_data, cli_device, cli_doctor, cli_measure, cli_predictor
from .cli_common import log, parents
from .cliargs import Parser, add_globals, finish, merge_globals, parser_of
from .errors import EXTRAS, Interrupted, LatkitError, did_you_mean, missing
from .text import CleanFormatter, clean

# in the order `latkit --help` lists them
COMMAND_GROUPS = (cli_measure.add_measure, cli_measure.add_collect, cli_doctor.add_doctor, cli_device.add_device,
                  cli_predictor.add_predictor, cli_data.add_data)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="latkit", description="Measure neural-network latency on real devices.")
    p.add_argument("--version", action="version", version=_version(), help="print the host and agent versions and exit")
    add_globals(p)
    sub = p.add_subparsers(dest="command", title="commands")
    par = parents()
    for add in COMMAND_GROUPS:
        add(sub, par)
    return finish(p)


def _version() -> str:
    from importlib import metadata
    from latkit.agents.agent import AGENT_VERSION
    try:
        host = metadata.version("latkit")
    except metadata.PackageNotFoundError:
        host = "(not installed)"
    return f"latkit {host}, device agent {AGENT_VERSION}"


def _terminate(signum, frame):
    raise Interrupted("SIGTERM", 143)


def _setup_logging(args) -> None:
    """`latkit` log lines on stderr: progress off a terminal, waits, warnings; -q keeps warnings, -v adds debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CleanFormatter("latkit: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)


def _one_line(text) -> str:
    """An error message as one plain line: no line breaks, no terminal colour codes (converters add them), any
    other control or escape character shown escaped (a device's message must not steer the terminal), at most
    2,000 characters (a 1 MB arch string is not echoed whole)."""
    return clean(re.sub(r"\s*\n\s*", "; ", re.sub(r"\x1b\[[0-9;]*m", "", str(text)).strip()), 2000)


def _stdout_gone() -> int:
    """The reader of stdout left (`| head`): end quietly, as a tool killed by SIGPIPE does."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


MEASURING = {"measure", "collect", "data retest", "predictor build", "predictor adapt"}  # commands that time models


def _command(args) -> str:
    """The subcommand as typed, e.g. `predictor fit`."""
    words = [getattr(args, "command", None)]
    words += [getattr(args, f"{words[0]}_command", None)] if words[0] else []
    return " ".join(w for w in words if w)


def main(argv=None) -> int:
    debug = os.environ.get("LATKIT_DEBUG") == "1"
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command it was given to, whose --help lists what it takes
        leaf = parser_of(parser, args)
        options = [o for a in leaf._actions for o in a.option_strings]
        # options share their `--`, so a looser match would offer --cores for --force
        leaf.error(f"unrecognized arguments: {' '.join(extra)}" + did_you_mean(extra[0].split("=")[0], options, 0.8))
    merge_globals(parser, args)
    if not hasattr(args, "func"):  # `latkit` or `latkit data` alone: what there is to run, as git and docker do
        parser_of(parser, args).print_help()
        return 0
    _setup_logging(args)
    signal.signal(signal.SIGTERM, _terminate)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's stack on stderr (a stop that hangs)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except LatkitError as e:
        if debug:
            traceback.print_exc()
        print(f"latkit: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except (Interrupted, KeyboardInterrupt) as e:
        name, code = (e.signame, e.exit_code) if isinstance(e, Interrupted) else ("SIGINT", 130)
        kept = "; rows measured so far are kept" if _command(args) in MEASURING else ""  # not after a fit's seeds
        print(f"latkit: {getattr(e, 'summary', None) or f'interrupted by {name}{kept}'}", file=sys.stderr)
        return code
    except Exception as e:  # a bug, or an environment problem latkit did not foresee: one line, not a traceback
        if debug:
            raise
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in EXTRAS:  # an extra not installed
            print(f"latkit: error: {missing(e.name, f'latkit {_command(args)}')}", file=sys.stderr)
            return 2
        where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
        print(f"latkit: error: {type(e).__name__}{where}: {_one_line(e) or 'no message'}; run again with "
              "LATKIT_DEBUG=1 for the traceback, and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

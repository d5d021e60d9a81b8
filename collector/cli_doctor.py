"""`latkit doctor`: whether each device is fit for timing (collector/doctor.py judges the agent's health op)."""
from __future__ import annotations

import sys

from . import validate
from .cli_common import Parents, print_json
from .devices import Registry


def cmd_doctor(args) -> int:
    """Per device one line (or one JSON document); exit 1 when a device has a problem that spoils timing."""
    from .doctor import doctor, line
    names = [d for d in (args.devices or "").split(",") if d] or None
    found = doctor(names, Registry(args.registry), args.cores)
    bad = [r["device"] for r in found if r["problems"]]
    if args.json:
        print_json({"ok": not bad, "devices": found})
    else:
        for r in found:
            print(line(r))
    if bad:
        print(f"latkit: error: {len(bad)} device(s) not fit for timing ({', '.join(bad)}): fix the problems named "
              "above, then run latkit doctor again", file=sys.stderr)
        return 1
    return 0


def add_doctor(sub, par: Parents) -> None:
    """`latkit doctor`: one line per device."""
    doc = sub.add_parser("doctor", parents=[par.registry], help="check devices before a long collection: reachable, "
                         "runtimes, governor, heat, load, busy cores, free disk (one line each)")
    doc.add_argument("--devices", help="comma-separated device names (default: every registered device and local)")
    doc.add_argument("--cores", type=validate.arg_cores, help="the CPU ids a collection will pin to (collect "
                     "--cores): a busy process on them is a problem")
    doc.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of lines")
    doc.set_defaults(func=cmd_doctor)


"""Start or stop a loopback fleet: real sshd "devices" on 127.0.0.2, .3, ... of this machine.

    scripts/fleet up [--n 3] [--register]   # start; print (or run) the `latkit device add` commands
    scripts/fleet down                      # stop every sshd of the fleet and delete its keys

The last device is pinned to CPU 0 with taskset. Each device's agent runs with --python (default: this
venv's Python). State (keys, sshd configs, workdirs) lives in a fresh private dir under
~/.cache/latkit/fleets/, whose path is kept in ~/.cache/latkit/fleets/current until `down`. With --dir,
state lives there instead (it must be yours and writable by no one else) and is kept after `down`, so the
same fleet restarts with the same host keys and ports; give `down` the same --dir.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from latkit.collector import LatkitError, Registry, add_device
from latkit.collector.loopback import fleets_root, new_fleet_dir, start_fleet, stop_fleet

CURRENT = fleets_root() / "current"  # the state dir of the fleet `up` started without --dir


def up(args) -> None:
    if not args.dir and CURRENT.exists():
        raise LatkitError(f"a fleet is already up in {CURRENT.read_text()}; stop it first with scripts/fleet down")
    base = args.dir or new_fleet_dir()
    fleet = start_fleet(base, [args.python] * args.n, cores=[None] * (args.n - 1) + ["0"])
    if not args.dir:
        CURRENT.write_text(str(base))
    for d in fleet:
        if args.register:
            add_device(**d.add_kwargs(), registry=Registry(args.registry))
            print(f"registered {d.name} at {d.user}@{d.host}:{d.port}")
        else:
            print(shlex.join(d.add_command(args.registry)))
    down = "scripts/fleet down" + (f" --dir {shlex.quote(args.dir)}" if args.dir else "")
    print(f"devices: {','.join(d.name for d in fleet)}; state in {base}; stop with: {down}")


def down(args) -> None:
    if args.dir:
        stop_fleet(args.dir)
    elif CURRENT.exists():
        stop_fleet(CURRENT.read_text(), remove=True)
        CURRENT.unlink()
    else:
        raise LatkitError("no fleet is up (scripts/fleet up starts one); for a fleet started with --dir, give that --dir")
    print("fleet stopped")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("--n", type=int, default=3, help="number of devices (default 3)")
    ap.add_argument("--dir", help="state dir to use and keep (default: a fresh private one, deleted by down)")
    ap.add_argument("--python", default=sys.executable, help="Python the devices' agents run with")
    ap.add_argument("--register", action="store_true", help="add the devices to the registry now")
    ap.add_argument("--registry", help="devices file (default $LATKIT_REGISTRY or ~/.config/latkit/devices.toml)")
    args = ap.parse_args()
    try:
        (up if args.action == "up" else down)(args)
    except LatkitError as e:
        print(f"fleet: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

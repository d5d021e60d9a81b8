"""Start or stop a loopback fleet: real sshd "devices" on 127.0.0.2, .3, ... of this machine.

    scripts/fleet up [--n 3] [--register]   # start; print (or run) the `latkit device add` commands
    scripts/fleet down                      # stop every sshd of the fleet

The last device is pinned to CPU 0 with taskset. Each device's agent runs with --python (default: this
venv's Python); state lives in --dir (default /tmp/latkit-fleet).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from collector import Registry, add_device
from collector.loopback import start_fleet, stop_fleet


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("--n", type=int, default=3, help="number of devices (default 3)")
    ap.add_argument("--dir", default="/tmp/latkit-fleet")
    ap.add_argument("--python", default=sys.executable, help="Python the devices' agents run with")
    ap.add_argument("--register", action="store_true", help="add the devices to the registry now")
    ap.add_argument("--registry", help="devices file (default $LATKIT_REGISTRY or ~/.config/latkit/devices.toml)")
    args = ap.parse_args()
    if args.action == "down":
        stop_fleet(args.dir)
        print(f"fleet in {args.dir} stopped")
        return
    fleet = start_fleet(args.dir, [args.python] * args.n, cores=[None] * (args.n - 1) + ["0"])
    for d in fleet:
        if args.register:
            add_device(d.name, d.host, d.port, d.user, d.key, d.python, d.workdir, ["loopback"],
                       trust_host_key=True, registry=Registry(args.registry))
            print(f"registered {d.name} at {d.user}@{d.host}:{d.port}")
        else:
            print(shlex.join(d.add_command(args.registry)))
    print(f"devices: {','.join(d.name for d in fleet)}; stop with: scripts/fleet down --dir {args.dir}")


if __name__ == "__main__":
    main()

"""`latkit device add|list|show|probe|remove`: the device registry (collector/devices.py) from the shell."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from rich.table import Table

from . import api, validate
from .cli_common import Parents, console, print_json
from .devices import Registry
from .transports import kind_of
from .text import cell, clean


def cmd_device_add(args) -> int:
    dev = api.add_device(args.name, args.host, args.port, args.user, args.key, args.python, args.workdir,
                         [t for t in (args.tags or "").split(",") if t], args.trust_host_key, Registry(args.registry),
                         lease=args.lease, ssh_config=args.ssh_config)
    runtimes = ', '.join(f'{k} {v}' for k, v in dev.probe.get('runtimes', {}).items()) or 'none'
    print(clean(f"added {dev.name} ({_route(dev)}): {dev.probe.get('cpu_model')}, {dev.probe.get('cpu_count')} "
                f"CPUs, runtimes {runtimes}; fingerprint {dev.fingerprint}", None))
    return 0


def cmd_device_list(args) -> int:
    devices = Registry(args.registry).devices()
    if args.no_check:
        up = [None] * len(devices)
    else:
        with ThreadPoolExecutor(max_workers=min(32, len(devices))) as pool:
            up = list(pool.map(api.reachable, devices))
    if args.json:
        print_json([{"name": d.name, "transport": d.transport, "address": d.address, "reachable": ok,
                      "runtimes": d.probe.get("runtimes", {}), "tags": list(d.tags), "fingerprint": d.fingerprint,
                      "last_probe": d.last_probe or None} for d, ok in zip(devices, up)])
        return 0
    table = Table("name", "host", "reachable", "runtimes", "tags", "last probe")
    for d, ok in zip(devices, up):
        runtimes = ", ".join(f"{k} {v}" for k, v in d.probe.get("runtimes", {}).items())
        table.add_row(cell(d.name), cell(d.address), "?" if ok is None else ("yes" if ok else "no"),
                      cell(runtimes) or ("(host's)" if kind_of(d).shares_host else "-"),
                      cell(",".join(d.tags)), cell(d.last_probe) or "-")
    console.print(table)
    return 0


def _route(dev) -> str:
    """Where an ssh device's entry leads: `gw (u@10.0.0.1:22) -> board (u@192.168.1.7:22)`."""
    return " -> ".join(map(str, api.ssh_route(dev)))


def cmd_device_show(args) -> int:
    dev = Registry(args.registry).get(args.name)
    entry = {"name": dev.name, **dev.to_toml()}
    if kind_of(dev).remote:
        entry["route"] = [dataclasses.asdict(h) for h in api.ssh_route(dev)]
    if args.json:
        print_json(entry)
        return 0
    for k, v in entry.items():
        if k not in ("route", "probe"):
            print(clean(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}", None))
    if kind_of(dev).remote:
        print(clean(f"route: {_route(dev)}", None))
    return 0


def cmd_device_probe(args) -> int:
    print_json(api.reprobe_device(args.name, Registry(args.registry)))  # JSON with or without --json
    return 0


def cmd_device_remove(args) -> int:
    Registry(args.registry).remove(args.name)
    print(f"removed {args.name}")
    return 0


def add_device(sub, par: Parents) -> None:
    """`latkit device add|list|show|probe|remove`."""
    dev = sub.add_parser("device", help="register, list and probe devices").add_subparsers(dest="device_command",
                                                                                          title="commands")
    for add in (_add, _list, _show, _probe, _remove):
        add(dev, par)


def _add(dev, par: Parents) -> None:
    """device add"""
    a = dev.add_parser("add", parents=[par.registry], help="register an SSH device: verify host key, deploy agent, probe")
    a.add_argument("name", help="the device's name in latkit (letters, digits, '.', '_', '-')")
    a.add_argument("--host", required=True, help="host name, address or ssh config Host alias of the device")
    a.add_argument("--port", type=validate.arg_whole(1, 65535), help="(default: the ssh config's Port, else 22)")
    a.add_argument("--user", help="(default: the ssh config's User, else yours)")
    a.add_argument("--key", help="private key file (default: the ssh config's IdentityFile, else ssh-agent and "
                                 "~/.ssh keys)")
    a.add_argument("--ssh-config", help="OpenSSH config whose Host entries resolve --host, with ProxyJump hops "
                                        "(default ~/.ssh/config)")
    a.add_argument("--python", help="Python on the device (default python3)")
    a.add_argument("--workdir", help="folder on the device for the agent and models (default ~/.latkit)")
    a.add_argument("--tags", help="comma-separated, e.g. cpu,arm,phone")
    a.add_argument("--trust-host-key", action="store_true", help="record an unknown host key (a changed one is "
                                                                 "always refused)")
    a.add_argument("--lease", help="the device's lease file (default: one per machine, "
                                   "<tempdir>/latkit-device.lease); give devices that share a machine their own")
    a.set_defaults(func=cmd_device_add)


def _list(dev, par: Parents) -> None:
    """device list"""
    ls = dev.add_parser("list", parents=[par.registry], help="registered devices and whether they answer now")
    ls.add_argument("--no-check", action="store_true", help="do not contact the devices")
    ls.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of a table")
    ls.set_defaults(func=cmd_device_list)


def _show(dev, par: Parents) -> None:
    """device show"""
    sh = dev.add_parser("show", parents=[par.registry], help="a device's entry and the route ssh config resolves "
                                                          "it to (no contact)")
    sh.add_argument("name", help="a registered device (latkit device list)")
    sh.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    sh.set_defaults(func=cmd_device_show)


def _probe(dev, par: Parents) -> None:
    """device probe"""
    pr = dev.add_parser("probe", parents=[par.registry], help="print what a device reports about itself (JSON)")
    pr.add_argument("name", help="a registered device, or local")
    pr.add_argument("--json", action="store_true", help="the output is JSON either way")
    pr.set_defaults(func=cmd_device_probe)


def _remove(dev, par: Parents) -> None:
    """device remove"""
    rm = dev.add_parser("remove", parents=[par.registry], help="forget a device")
    rm.add_argument("name", help="a registered device (local is built in and stays)")
    rm.set_defaults(func=cmd_device_remove)


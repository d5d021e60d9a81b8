"""Boards behind a gateway: ~/.ssh/config aliases and ProxyJump over a real chain of loopback sshds.

gw0 (127.0.0.2), gw1 (127.0.0.3) and the board (127.0.0.4) each run their own sshd. All are on loopback, so
the board could be reached directly too: the tests prove the route by who holds the TCP connection to the
board's sshd (a session process of the gateway's sshd, never this test's process).
"""
import os
import subprocess
import sys

import psutil
import pytest

from latkit.collector import LatkitError, Registry, Settings, Store, add_device, collect_models, probe
from latkit.collector.api import ssh_route
from latkit.collector.devices import Device
from latkit.collector.loopback import _keygen, new_fleet_dir, start_fleet, stop_fleet
from conftest import ROOT, tiny_cnn

QUICK = Settings(warmup_min_count=2, warmup_min_s=0.01, repeats_min_count=10, repeats_min_s=0.05, repeats_max_s=0.2,
                 rounds=1)


@pytest.fixture(scope="module")
def chain():
    """Three sshds and an ssh config naming them: board is behind gw0, board2 behind gw0 then gw1."""
    base = new_fleet_dir()
    try:
        gw0, gw1, board = start_fleet(base, [sys.executable] * 3, prefix="hop")
        config = base / "ssh_config"
        config.write_text(f"""\
Host gw0
  HostName {gw0.host}
  Port {gw0.port}
Host gw1
  HostName {gw1.host}
  Port {gw1.port}
Host board board2
  HostName {board.host}
  Port {board.port}
Host board
  ProxyJump gw0
Host board2
  ProxyJump gw0,gw1
Host dead
  HostName 127.0.0.9
  Port 1
Host behind-dead
  HostName {board.host}
  ProxyJump dead
Host behind-closed
  HostName {board.host}
  ProxyJump gw0,127.0.0.9:1
Host *
  User {board.user}
  IdentityFile {board.key}
  IdentitiesOnly yes
""")
        pids = [d.pid for d in (gw0, gw1, board)]
        yield {"gw0": gw0, "gw1": gw1, "board": board, "config": str(config), "base": base}
    finally:
        stop_fleet(base, remove=True)
    assert not base.exists() and not any(map(psutil.pid_exists, pids))  # nothing outlives the tests


def holders(host: str, port: int) -> set:
    """Pids of the processes whose open TCP connections lead to host:port."""
    return {c.pid for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.raddr and (c.raddr.ip, c.raddr.port) == (host, port)}


def sshd_tree(dev) -> set:
    root = psutil.Process(dev.pid)
    return {root.pid} | {p.pid for p in root.children(recursive=True)}


def add(chain, tmp_path, host, **kw):
    b = chain["board"]
    return add_device("b", host, python=b.python, workdir=str(tmp_path / "work"), trust_host_key=True,
                      registry=Registry(tmp_path / "devices.toml"), lease=str(tmp_path / "lease"),
                      ssh_config=chain["config"], **kw)


def test_config_resolution_explicit_values_win(chain, tmp_path):
    """Alias, HostName, Port, User, IdentityFile and both ProxyJump hops come from the config, Include
    lines too; values given in the registry win over it; a ProxyJump loop is refused in one line."""
    gw0, gw1, board = chain["gw0"], chain["gw1"], chain["board"]
    dev = Device(name="b", transport="ssh", host="board2", ssh_config=chain["config"])
    hops = ssh_route(dev)
    assert [(h.name, h.host, h.port, h.user, h.keys) for h in hops] == [
        ("gw0", gw0.host, gw0.port, gw0.user, (gw0.key,)), ("gw1", gw1.host, gw1.port, gw1.user, (gw1.key,)),
        ("board2", board.host, board.port, board.user, (board.key,))]
    mine = Device(name="b", transport="ssh", host="board", port=2200, user="me", key="/k", ssh_config=chain["config"])
    *_, last = ssh_route(mine)
    assert (last.host, last.port, last.user, last.keys) == (board.host, 2200, "me", ("/k",))
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "lab.conf").write_text(f"Host far\n  HostName {board.host}\n  ProxyJump gw0\n")
    (tmp_path / "main").write_text(f"Include {tmp_path}/conf.d/*.conf\nInclude {chain['config']}\n")
    hops = ssh_route(Device(name="b", transport="ssh", host="far", ssh_config=str(tmp_path / "main")))
    assert [(h.name, h.host, h.port) for h in hops] == [("gw0", gw0.host, gw0.port), ("far", board.host, 22)]
    loop = tmp_path / "loop"
    loop.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(LatkitError, match=r"ProxyJump chain in .*loop runs over 8 hops at [ab]; fix the loop"):
        ssh_route(Device(name="b", transport="ssh", host="a", ssh_config=str(loop)))


@pytest.fixture(scope="module")
def onnx_model(export_cache):
    import torch
    from latkit.collector import export
    return export(tiny_cnn(), (torch.randn(1, 3, 32, 32),), "onnx", arch="tiny_cnn", cache_dir=export_cache)


def test_add_and_collect_through_the_gateway(chain, tmp_path, onnx_model):
    """`latkit device add b --host board` is all it takes: the agent runs on the board, reached through gw0,
    every hop's host key is recorded, and a collection measures through the chain."""
    gw0, board = chain["gw0"], chain["board"]
    reg = tmp_path / "devices.toml"
    r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "device", "add", "b", "--host", "board", "--ssh-config",
                        chain["config"], "--python", board.python, "--workdir", str(tmp_path / "work"),
                        "--trust-host-key", "--lease", str(tmp_path / "lease"), "--registry", str(reg)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"added b (gw0 ({gw0.user}@{gw0.host}:{gw0.port}) -> board ({board.user}@{board.host}:{board.port})): " \
        in r.stdout
    entry = Registry(reg).get("b")
    assert (entry.host, entry.port, entry.user, entry.key) == ("board", None, None, None)  # the config stays the truth
    known = Registry(reg).known_hosts.read_text()
    assert f"[{gw0.host}]:{gw0.port} " in known and f"[{board.host}]:{board.port} " in known
    show = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "device", "show", "b", "--registry", str(reg)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert f"route: gw0 ({gw0.user}@{gw0.host}:{gw0.port}) -> board (" in show.stdout

    transport = entry.connect()
    try:
        transport.start()
        via = holders(board.host, board.port)
        assert via and via <= sshd_tree(gw0) and os.getpid() not in via  # through gw0, not straight from here
    finally:
        transport.close()
    assert not holders(gw0.host, gw0.port) & {os.getpid()}  # every hop closed

    assert probe("b", Registry(reg))["route"] == [f"gw0 ({gw0.user}@{gw0.host}:{gw0.port})",
                                                  f"board ({board.user}@{board.host}:{board.port})"]
    report = collect_models([onnx_model.path], ["b"], settings=QUICK, out=tmp_path / "data",
                            registry=Registry(reg), progress=False)
    rows = Store(tmp_path / "data").read().to_pylist()
    assert report.ok and [(r["device"], r["status"]) for r in rows] == [("b", "ok")] and rows[0]["latency_ms"] > 0


def test_two_jump_hops(chain, tmp_path):
    """ProxyJump gw0,gw1: gw1 is reached through gw0, the board through gw1."""
    gw0, gw1, board = chain["gw0"], chain["gw1"], chain["board"]
    dev = add(chain, tmp_path, "board2")
    transport = dev.connect()
    try:
        transport.start()
        assert [h.name for h in transport.route] == ["gw0", "gw1", "board2"]
        assert holders(gw1.host, gw1.port) <= sshd_tree(gw0) and holders(board.host, board.port) <= sshd_tree(gw1)
        assert holders(board.host, board.port) and os.getpid() not in holders(board.host, board.port)
    finally:
        transport.close()


def test_changed_host_key_of_a_hop_names_it(chain, tmp_path):
    """A gateway whose key changed is refused in one line naming it, trusted or not; an unknown one too."""
    gw0 = chain["gw0"]
    _keygen(tmp_path / "other")
    other = (tmp_path / "other.pub").read_text().split()
    reg = tmp_path / "devices.toml"
    Registry(reg).known_hosts.write_text(f"[{gw0.host}]:{gw0.port} {other[0]} {other[1]}\n")
    r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "device", "add", "b", "--host", "board", "--ssh-config",
                        chain["config"], "--trust-host-key", "--registry", str(reg)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"host key of jump host gw0 ({gw0.user}@{gw0.host}:{gw0.port}) of b changed" in lines[0]
    assert not Registry(reg).path.exists()
    with pytest.raises(LatkitError, match=r"host key of jump host gw0 \(.*\) of b is not known"):
        add_device("b", "board", ssh_config=chain["config"], registry=Registry(tmp_path / "fresh" / "devices.toml"))


@pytest.mark.parametrize("host,words", [
    ("behind-dead", "cannot reach jump host dead ({user}@127.0.0.9:1) of b: "),
    ("behind-closed", "cannot reach jump host {user}@127.0.0.9:1 of b from gw0 ({user}@127.0.0.2:"),
    ("nosuchboard.invalid", "cannot resolve b at {user}@nosuchboard.invalid:22: no Host block in the ssh config gives "
                            "nosuchboard.invalid a HostName"),
])
def test_unreachable_hop_names_it(chain, tmp_path, host, words):
    """One line on stderr naming the hop that failed (paramiko's own log lines stay out of it)."""
    r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "device", "add", "b", "--host", host, "--ssh-config",
                        chain["config"], "--trust-host-key", "--registry", str(tmp_path / "devices.toml")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = r.stderr.strip().splitlines()
    assert r.returncode in (1, 2) and len(lines) == 1, r.stderr
    assert words.format(user=chain["board"].user) in lines[0]

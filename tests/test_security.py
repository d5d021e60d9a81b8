"""Security and bad input: the loopback fleet trusts only keys it made in private dirs; model files are data."""
import os
import shutil
import stat
import subprocess
import sys

import paramiko
import pytest

from collector.loopback import _keygen, new_fleet_dir, start_fleet, stop_fleet
from conftest import ROOT

# -- the loopback fleet -----------------------------------------------------------------------------------


def login(dev, key) -> str:
    """Log in to a fleet device with `key` (nothing else: no agent, no ~/.ssh keys); returns `id -un`."""
    ssh = paramiko.SSHClient()
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        ssh.connect(dev.host, dev.port, dev.user, key_filename=str(key), look_for_keys=False, allow_agent=False,
                    timeout=10)
        return ssh.exec_command("id -un")[1].read().decode().strip()
    finally:
        ssh.close()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_planted_key_is_never_authorized(tmp_path):
    """A key pair left in the fleet's own dir (client_key and an authorized_keys naming it) is replaced, not
    trusted; the fleet's fresh key logs in through sshd with StrictModes yes; keys 0600, dirs 0700."""
    base = new_fleet_dir()
    planted = tmp_path / "planted"
    _keygen(planted)
    shutil.copy(planted, base / "client_key")
    shutil.copy(f"{planted}.pub", base / "client_key.pub")
    (base / "dev0").mkdir(mode=0o700)
    shutil.copy(f"{planted}.pub", base / "dev0" / "authorized_keys")
    try:
        dev, = start_fleet(base, [sys.executable])
        assert "StrictModes yes" in (base / "dev0" / "sshd_config").read_text().splitlines()
        with pytest.raises(paramiko.AuthenticationException):
            login(dev, planted)
        assert login(dev, dev.key) == dev.user
        assert (base / "client_key").read_bytes() != planted.read_bytes()
        assert mode(base) == mode(base / "dev0") == 0o700
        for key in (base / "client_key", base / "dev0" / "ssh_host_ed25519_key", base / "dev0" / "authorized_keys"):
            assert mode(key) == 0o600, key
    finally:
        stop_fleet(base, remove=True)
    assert not base.exists()


@pytest.mark.parametrize("case", ["group-writable", "foreign-owned", "below /tmp"])
def test_untrustworthy_fleet_dir_refused_in_one_line(case, tmp_path):
    """`scripts/fleet up --dir` refuses a dir someone else could have planted keys in, before touching it."""
    base = tmp_path / "fleet" if case == "below /tmp" else new_fleet_dir()
    base.mkdir(exist_ok=True)
    _keygen(base / "client_key")
    planted = (base / "client_key").read_bytes()
    if case == "group-writable":
        os.chmod(base, 0o770)
    elif case == "foreign-owned":
        os.chown(base, 65534, 65534)
    try:
        r = subprocess.run([sys.executable, "scripts/fleet.py", "up", "--n", "1", "--dir", str(base)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"fleet: error: refusing fleet dir {base}: ") and "--dir" in lines[0]
        expect = {"group-writable": "it is writable by group or others (mode 0770)",
                  "foreign-owned": "it is owned by uid 65534",
                  "below /tmp": "/tmp above it is writable by group or others (mode 1777)"}[case]
        assert expect in lines[0]
        assert (base / "client_key").read_bytes() == planted and not (base / "fleet.json").exists()
    finally:
        if case != "below /tmp":
            shutil.rmtree(base)

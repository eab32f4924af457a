"""`voltgate-agent install` / `uninstall` into a scratch root directory (`--root`), checked with the real
systemd tools of this machine where they exist (systemd-analyze, systemd-sysusers; no running systemd needed).

The virtualenv step is skipped (`--skip-venv`): it pip-installs the whole project with its dependencies from
the network, minutes on a shared machine; the unit is pointed at this interpreter's environment instead
(`--venv sys.prefix`), which has the `voltgate-agent` console script, so `systemd-analyze verify` checks
the installed unit as written.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.__main__ import build_parser
from agent.install import CONFIG, MANIFEST, UNIT

VENV = sys.prefix

CONFIG_TEXT = """
vehicle_id = "bus-0042"

[[can]]
name = "traction"
interface = "socketcan"
channel = "can0"
bitrate = 500000

[[can]]
name = "chassis"
interface = "socketcan"
channel = "can1"
bitrate = 250000

[[can]]
name = "bms"
interface = "slcan"
channel = "/dev/voltgate/slcan-0001@115200"
bitrate = 500000

[uplink]
broker_url = "mqtts://broker.example.com:8883"
fleet_id = "depot-3"

[alerts]
led_warning = "voltgate:amber:alert"
led_critical = "voltgate:red:alert"
"""


def _cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    code = args.handler(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _install(root: Path, config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code, out, err = _cli(
        "install", "--root", str(root), "--config", str(config), "--skip-venv", "--venv", VENV, *extra,
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    return out


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under root: mode, mtime and content (files)."""
    tree = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        tree[str(path.relative_to(root))] = (stat.st_mode, stat.st_mtime_ns if path.is_file() else 0, content)
    return tree


def _ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG_TEXT)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def test_install_lays_out_the_gateway(root: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _install(root, config, capsys)

    modes = {
        CONFIG: 0o640,
        UNIT: 0o644,
        "/etc/udev/rules.d/70-voltgate.rules": 0o644,
        "/etc/sysusers.d/voltgate.conf": 0o644,
        "/etc/systemd/network/80-voltgate-can0.network": 0o644,
        "/etc/systemd/network/80-voltgate-can1.network": 0o644,
        MANIFEST: 0o644,
    }
    for path, mode in modes.items():
        assert (root / path.lstrip("/")).stat().st_mode & 0o7777 == mode, path
    assert (root / CONFIG.lstrip("/")).read_text() == CONFIG_TEXT
    # THEN each SocketCAN bus comes up at its configured bitrate; the SLCAN bus (bitrate set over serial
    # by python-can) gets no .network file
    networks = sorted(p.name for p in (root / "etc/systemd/network").iterdir())
    assert networks == ["80-voltgate-can0.network", "80-voltgate-can1.network"]
    can0 = _ini(root / "etc/systemd/network/80-voltgate-can0.network")
    can1 = _ini(root / "etc/systemd/network/80-voltgate-can1.network")
    assert (can0["Match"]["Name"], can0["CAN"]["BitRate"]) == ("can0", "500000")
    assert (can1["Match"]["Name"], can1["CAN"]["BitRate"]) == ("can1", "250000")
    assert can0["Link"]["RequiredForOnline"] == "no"
    # THEN the unit runs the agent from --venv, and the LEDs of the config are the udev rule's
    unit = _ini(root / UNIT.lstrip("/"))
    assert unit["Service"]["ExecStart"].startswith(f"{VENV}/bin/voltgate-agent run ")
    rules = (root / "etc/udev/rules.d/70-voltgate.rules").read_text()
    for led in ("voltgate:amber:alert", "voltgate:red:alert"):
        assert f'SUBSYSTEM=="leds", KERNEL=="{led}"' in rules
    assert 'SUBSYSTEM=="tty", ATTRS{idVendor}=="16d0", ATTRS{idProduct}=="117e"' in rules
    # THEN host changes are listed, not made
    assert "skipped  systemd-sysusers /etc/sysusers.d/voltgate.conf" in out
    assert "skipped  systemctl enable voltgate-agent.service" in out
    assert "skipped  systemctl enable --now systemd-networkd.service" in out


def test_second_run_changes_nothing(root: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _install(root, config, capsys)
    before = _tree(root)

    out = _install(root, config, capsys)

    assert _tree(root) == before  # same files, modes, contents and modification times
    assert "nothing changed" in out
    assert "changed " not in out and "skipped" not in out


def test_install_keeps_the_config_and_follows_it(
    root: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _install(root, config, capsys)
    # GIVEN the operator edits the installed config: can0 at 1 Mbit/s, can1 gone
    installed = root / CONFIG.lstrip("/")
    edited = CONFIG_TEXT.replace("bitrate = 500000", "bitrate = 1000000", 1)
    edited = edited.replace(
        'name = "chassis"\ninterface = "socketcan"\nchannel = "can1"\nbitrate = 250000', ""
    )
    edited = edited.replace("[[can]]\n\n\n[[can]]", "[[can]]")
    installed.write_text(edited)
    other = config.with_name("other.toml")
    other.write_text(CONFIG_TEXT.replace("bus-0042", "bus-0099"))

    out = _install(root, other, capsys)

    assert installed.read_text() == edited  # the operator's file, not --config's
    assert "/etc/voltgate/agent.toml (the operator's)" in out
    assert _ini(root / "etc/systemd/network/80-voltgate-can0.network")["CAN"]["BitRate"] == "1000000"
    assert not (root / "etc/systemd/network/80-voltgate-can1.network").exists()
    assert "80-voltgate-can1.network removed (no longer configured)" in out


def test_uninstall_removes_exactly_what_install_added(
    root: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a root with other software's files in the directories the install writes to
    for path, text in {
        "etc/udev/rules.d/99-other.rules": "# someone else's\n",
        "etc/systemd/network/10-eth0.network": "[Match]\nName=eth0\n",
        "opt/other/keep": "x",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    before = _tree(root)
    _install(root, config, capsys)
    buffer = root / "var/lib/voltgate/buffer.sqlite3"  # what the agent's StateDirectory= would hold
    buffer.parent.mkdir(parents=True)
    buffer.write_bytes(b"samples")

    code, out, err = _cli("uninstall", "--root", str(root), capsys=capsys)

    assert code == 0, err
    kept = {
        "etc/voltgate",
        "etc/voltgate/agent.toml",
        "var",
        "var/lib",
        "var/lib/voltgate",
        str(buffer.relative_to(root)),
    }
    after = _tree(root)
    assert {k: v for k, v in after.items() if k not in kept} == before
    assert set(after) - set(before) == kept  # the config and the buffer stay without --purge
    assert "skipped  systemctl disable --now voltgate-agent.service" in out


def test_uninstall_purge_leaves_the_root_as_it_was(
    root: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("gateway\n")
    before = _tree(root)
    _install(root, config, capsys)
    (root / "var/lib/voltgate").mkdir(parents=True)
    (root / "var/lib/voltgate/buffer.sqlite3").write_bytes(b"samples")

    code, out, err = _cli("uninstall", "--root", str(root), "--purge", capsys=capsys)

    assert code == 0, err
    after = _tree(root)
    assert {k: v for k, v in after.items() if k not in {"var", "var/lib"}} == before
    assert "skipped  userdel voltgate" in out
    code, _, err = _cli("uninstall", "--root", str(root), capsys=capsys)
    assert code == 2 and "no voltgate install under" in err


def test_venv_step_is_listed_not_run_under_root(
    root: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli("install", "--root", str(root), "--config", str(config), capsys=capsys)
    assert code == 0, err
    assert re.search(r"skipped  \S+ -m venv /opt/voltgate/venv", out)
    assert not (root / "opt/voltgate/venv").exists()


def test_a_config_that_cannot_be_installed_is_one_sentence(
    root: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(CONFIG_TEXT.replace('channel = "can1"', 'channel = "can1; rm -rf /"'))
    code, _, err = _cli("install", "--root", str(root), "--config", str(config), "--skip-venv", capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and "is not a network interface name" in err
    assert not (root / "etc/systemd/network").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_installed_unit_verifies_and_is_hardened(
    root: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _install(root, config, capsys)
    unit = root / UNIT.lstrip("/")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and unit.name not in verify.stdout + verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
    )
    if "--offline" in security.stderr:
        pytest.skip(f"this systemd-analyze has no offline security review: {security.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert match and security.returncode == 0, security.stdout + security.stderr
    assert float(match.group(1)) <= 2.0, security.stdout


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_installed_sysusers_file_makes_the_agent_user(
    root: Path, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _install(root, config, capsys)
    # GIVEN another scratch root with an /etc: systemd-sysusers creates users there, not on this host
    users_root = tmp_path / "users"
    (users_root / "etc").mkdir(parents=True)
    subprocess.run(
        ["systemd-sysusers", f"--root={users_root}", str(root / "etc/sysusers.d/voltgate.conf")],
        check=True,
        capture_output=True,
    )
    passwd = dict(line.split(":", 1) for line in (users_root / "etc/passwd").read_text().splitlines())
    _, uid, gid, _, home, shell = passwd["voltgate"].split(":")
    groups = {
        line.split(":")[0]: line.split(":")[2] for line in (users_root / "etc/group").read_text().splitlines()
    }
    assert groups["voltgate"] == gid
    assert (home, shell) == ("/var/lib/voltgate", "/usr/sbin/nologin")
    assert int(uid) < 1000  # a system user


def test_install_module_runs_on_the_system_python_before_the_virtualenv() -> None:
    # GIVEN no site-packages at all (-S), as Debian's python3 has no pydantic: the install must still start
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import agent.install, sys; print('pydantic' in sys.modules)"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr

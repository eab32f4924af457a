"""`voltgate-agent install` / `uninstall`: the agent on a Debian / Raspberry Pi OS gateway in one command.

    sudo python3 -m agent.install [--root DIR] [--config SRC] [--venv PATH] [--skip-venv]   (from a checkout)
    voltgate-agent install ... / voltgate-agent uninstall [--root DIR] [--purge]

Install lays down, and converges to on every run (a second run changes nothing and says so):
- a virtualenv with `.[edge]` (the checkout pip-installed into --venv, default /opt/voltgate/venv);
- /etc/voltgate/agent.toml from the example or --config (kept if present: it is the operator's);
- the `voltgate` system user and group (a sysusers.d file, applied by systemd-sysusers);
- the hardened unit (systemd/voltgate-agent.service, its paths pointed at --venv), enabled;
- a udev rule: the configured alert LEDs writable by group voltgate, stable names for serial adapters;
- a systemd-networkd `.network` file per SocketCAN bus at its configured bitrate (networkd enabled).
What it wrote is listed with checksums in /opt/voltgate/install-manifest.json; uninstall removes exactly
that (and the virtualenv it made), keeping the config and the buffer unless --purge.

Under --root DIR only files are laid out: commands that change the host (useradd via systemd-sysusers, pip,
systemctl, udevadm, chown) are listed as skipped, never run. This module and `agent.install_render` use the
standard library only, so the system `python3` can run them before the virtualenv exists; the config is read
by `agent.settings` (pydantic), for which the install re-executes itself with the virtualenv's Python.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agent import install_render as render

if TYPE_CHECKING:
    from agent.settings import AgentSettings

DEFAULT_VENV: Final = "/opt/voltgate/venv"
CONFIG: Final = "/etc/voltgate/agent.toml"
UNIT: Final = "/etc/systemd/system/voltgate-agent.service"
UDEV_RULES: Final = "/etc/udev/rules.d/70-voltgate.rules"
NETWORK_DIR: Final = "/etc/systemd/network"
SYSUSERS: Final = "/etc/sysusers.d/voltgate.conf"
README: Final = "/opt/voltgate/README.md"  # the unit's Documentation=
MANIFEST: Final = "/opt/voltgate/install-manifest.json"
STATE_DIR: Final = "/var/lib/voltgate"  # the unit's StateDirectory=: the buffer lives here
VENV_MARKER: Final = ".voltgate-install"  # in a virtualenv this install made (uninstall removes only those)
SHIPPED_LED_ROOT: Final = Path("/sys/class/leds")

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2


class InstallError(Exception):
    """The install cannot go on; the message says why and what to do."""


class _NeedsVenvPython(Exception):  # noqa: N818 — a control-flow signal, not an error
    def __init__(self, python: Path) -> None:
        self.python = python


@dataclass(frozen=True, slots=True)
class Target:
    """The gateway's file system: `/`, or a scratch directory laid out like it."""

    root: Path
    venv: str  # absolute path on the gateway

    @property
    def live(self) -> bool:
        return self.root.resolve() == Path("/")

    def path(self, gateway_path: str) -> Path:
        return self.root / gateway_path.lstrip("/")


@dataclass(slots=True)
class Report:
    lines: list[str] = field(default_factory=list)
    changed: bool = False

    def did(self, message: str) -> None:
        self.changed = True
        self.lines.append(f"  changed  {message}")

    def kept(self, message: str) -> None:
        self.lines.append(f"  kept     {message}")

    def skipped(self, command: list[str]) -> None:
        self.lines.append(f"  skipped  {shlex.join(command)}  (not run under --root)")


def source_root() -> Path:
    """The checkout this module runs from: the unit, the example config and the project to pip-install."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file() or not (root / "systemd" / "voltgate-agent.service").is_file():
        raise InstallError(
            f"no voltgate checkout at {root}: run the install from a clone of the repository "
            "(sudo python3 -m agent.install)"
        )
    return root


# --- files ---------------------------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_parents(target: Target, path: Path, created_dirs: set[str]) -> None:
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)  # mkdir's mode goes through the umask
        created_dirs.add("/" + str(directory.relative_to(target.root)))


def _write(target: Target, gateway_path: str, text: str, mode: int, created_dirs: set[str]) -> bool:
    """Write `text` with `mode` unless the file already is exactly that; True when it changed."""
    path = target.path(gateway_path)
    data = text.encode()
    if path.is_file() and path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode:
        return False
    _make_parents(target, path, created_dirs)
    temporary = path.with_name(f".{path.name}.voltgate-tmp")
    temporary.write_bytes(data)
    temporary.chmod(mode)
    temporary.replace(path)
    return True


def desired_files(settings: AgentSettings, target: Target, source: Path) -> dict[str, tuple[str, int]]:
    """Every file install manages (not the config), by gateway path: its text and mode."""
    unit = render.unit_for_venv((source / "systemd" / "voltgate-agent.service").read_text(), target.venv)
    files = {
        UNIT: (unit, 0o644),
        UDEV_RULES: (render.udev_rules(led_names(settings)), 0o644),
        SYSUSERS: (render.sysusers(), 0o644),
        README: ((source / "README.md").read_text(encoding="utf-8"), 0o644),
    }
    for link in can_links(settings):
        files[f"{NETWORK_DIR}/{render.network_file_name(link)}"] = (render.can_network(link), 0o644)
    return files


def can_links(settings: AgentSettings) -> list[render.CanLink]:
    return [
        render.CanLink(bus.name, bus.channel, bus.bitrate)
        for bus in settings.can
        if bus.interface == "socketcan"
    ]


def led_names(settings: AgentSettings) -> list[str]:
    """The configured alert LEDs, when they are the kernel's LED class (not a directory laid out like it)."""
    alerts = settings.alerts
    if not alerts.enabled or alerts.led_root != SHIPPED_LED_ROOT:
        return []
    names = (alerts.led_info, alerts.led_warning, alerts.led_critical)
    return list(dict.fromkeys(name for name in names if name))


def read_settings(config: Path, target: Target) -> AgentSettings:
    try:
        from agent.settings import ConfigError, load_settings
    except ModuleNotFoundError as err:  # the system python3 before the virtualenv: re-run inside it
        python = target.path(target.venv) / "bin" / "python"
        if target.live and python.is_file():
            raise _NeedsVenvPython(python) from err
        raise InstallError(f"reading the config needs {err.name}: run with the agent's Python") from err
    try:
        return load_settings(config)
    except ConfigError as err:
        raise InstallError(f"{err}; fix {CONFIG} and run the install again") from err


# --- manifest ------------------------------------------------------------------------------------------


def load_manifest(target: Target) -> dict[str, object] | None:
    path = target.path(MANIFEST)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InstallError(f"{MANIFEST} is unreadable ({err}); remove the install by hand") from err
    if not isinstance(manifest, dict):
        raise InstallError(f"{MANIFEST} is not an install manifest")
    return manifest


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list | dict) else []


# --- commands --------------------------------------------------------------------------------------------


def _run(target: Target, command: list[str], report: Report) -> None:
    if not target.live:
        report.skipped(command)
        return
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise InstallError(f"cannot run {command[0]}: {err.strerror or err}") from err
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise InstallError(f"{shlex.join(command)} failed: {detail[-1] if detail else result.returncode}")
    report.lines.append(f"  ran      {shlex.join(command)}")


def _enabled(unit: str) -> bool:
    result = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True, check=False)
    return result.stdout.strip() == "enabled"


def ensure_venv(target: Target, source: Path, report: Report, *, upgrade: bool) -> None:
    venv = target.path(target.venv)
    agent = venv / "bin" / "voltgate-agent"
    if agent.is_file() and not upgrade:
        report.kept(f"virtualenv {target.venv}")
        return
    if not target.live:  # pip would build and install the whole project into a scratch directory
        report.skipped([sys.executable, "-m", "venv", target.venv])
        return
    made = not (venv / "pyvenv.cfg").is_file()
    if made:
        try:
            _run(target, [sys.executable, "-m", "venv", str(venv)], report)
        except InstallError as err:
            raise InstallError(f"{err} (on Debian: apt-get install python3-venv)") from err
        (venv / VENV_MARKER).write_text("made by voltgate-agent install; removed by uninstall\n")
    _run(target, [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{source}[edge]"], report)
    report.did(f"virtualenv {target.venv} with {source}[edge]")


# --- install / uninstall ---------------------------------------------------------------------------------


def install(
    target: Target, config_source: Path | None, *, skip_venv: bool = False, upgrade: bool = False
) -> Report:
    report = Report()
    source = source_root()
    previous = load_manifest(target) or {}
    created_dirs = set(_strings(previous.get("dirs")))
    if not skip_venv:
        ensure_venv(target, source, report, upgrade=upgrade)

    config = target.path(CONFIG)
    if config.exists():
        report.kept(f"{CONFIG} (the operator's)")
    else:
        example = config_source or source / "agent" / "agent.example.toml"
        try:
            text = example.read_text(encoding="utf-8")
        except OSError as err:
            raise InstallError(f"cannot read the config {example}: {err.strerror or err}") from err
        _write(target, CONFIG, text, 0o640, created_dirs)
        report.did(f"{CONFIG} from {example}: edit it (vehicle, buses, broker) before starting the agent")
    try:
        settings = read_settings(config, target)
    except _NeedsVenvPython:
        print("\n".join(report.lines), flush=True)  # what this process did; the rest from the virtualenv
        raise

    try:
        files = desired_files(settings, target, source)
    except render.RenderError as err:
        raise InstallError(f"{err}; fix {CONFIG} and run the install again") from err
    for gateway_path, (text, mode) in files.items():
        if _write(target, gateway_path, text, mode, created_dirs):
            report.did(gateway_path)
        else:
            report.kept(gateway_path)
    for stale in sorted(set(_strings(previous.get("files"))) - set(files)):
        target.path(stale).unlink(missing_ok=True)
        report.did(f"{stale} removed (no longer configured)")

    networkd_enabled = bool(previous.get("networkd_enabled_by_install"))
    if report.changed:
        _run(target, ["systemd-sysusers", SYSUSERS], report)
        _run(target, ["chown", f"root:{render.AGENT_GROUP}", CONFIG], report)
        _run(target, ["systemctl", "daemon-reload"], report)
        _run(target, ["systemctl", "enable", "voltgate-agent.service"], report)
        if (
            can_links(settings)
            and not networkd_enabled
            and not (target.live and _enabled("systemd-networkd"))
        ):
            _run(target, ["systemctl", "enable", "--now", "systemd-networkd.service"], report)
            networkd_enabled = target.live
        _run(target, ["udevadm", "control", "--reload"], report)
        _run(target, ["udevadm", "trigger", "--action=change", "--subsystem-match=leds"], report)

    manifest = {
        "venv": target.venv,
        "venv_made_by_install": (target.path(target.venv) / VENV_MARKER).is_file(),
        "files": {path: _digest(text.encode()) for path, (text, _mode) in sorted(files.items())},
        "dirs": sorted(created_dirs),
        "networkd_enabled_by_install": networkd_enabled,
    }
    _write(
        target, MANIFEST, json.dumps(manifest, indent=2) + "\n", 0o644, created_dirs
    )  # README made its dir
    if report.changed:
        report.lines.append("installed; start the agent with: systemctl start voltgate-agent")
    else:
        report.lines.append("voltgate is installed as configured: nothing changed")
    return report


def uninstall(target: Target, *, purge: bool = False) -> Report:
    report = Report()
    manifest = load_manifest(target)
    if manifest is None:
        raise InstallError(f"no voltgate install under {target.root} ({MANIFEST} is missing)")
    _run(target, ["systemctl", "disable", "--now", "voltgate-agent.service"], report)
    if manifest.get("networkd_enabled_by_install"):
        _run(target, ["systemctl", "disable", "systemd-networkd.service"], report)
    for gateway_path in _strings(manifest.get("files")):
        if target.path(gateway_path).is_file():
            target.path(gateway_path).unlink()
            report.did(f"{gateway_path} removed")
    venv = target.path(str(manifest.get("venv", DEFAULT_VENV)))
    if manifest.get("venv_made_by_install") and (venv / VENV_MARKER).is_file():
        shutil.rmtree(venv)
        report.did(f"virtualenv {venv} removed")
    if purge:
        if target.path(CONFIG).is_file():
            target.path(CONFIG).unlink()
            report.did(f"{CONFIG} removed (--purge)")
        if target.path(STATE_DIR).is_dir():
            shutil.rmtree(target.path(STATE_DIR))
            report.did(f"{STATE_DIR} removed with the buffer (--purge)")
        _run(target, ["userdel", render.AGENT_USER], report)
    else:
        report.kept(f"{CONFIG} and {STATE_DIR} (the buffer); --purge removes them and the user")
    target.path(MANIFEST).unlink()
    for directory in sorted(_strings(manifest.get("dirs")), key=len, reverse=True):
        with contextlib.suppress(OSError):  # not empty: someone else's files are in it
            target.path(directory).rmdir()
    _run(target, ["systemctl", "daemon-reload"], report)
    _run(target, ["udevadm", "control", "--reload"], report)
    report.lines.append("uninstalled")
    return report


# --- command line ---------------------------------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`install` and `uninstall`, for `voltgate-agent` and for `python3 -m agent.install`."""
    install_parser = commands.add_parser("install", help="install the agent on this gateway (idempotent)")
    install_parser.add_argument(
        "--root", type=Path, default=Path("/"), metavar="DIR", help="lay out files under DIR only"
    )
    install_parser.add_argument(
        "--config", type=Path, default=None, metavar="SRC", help="config to install if none is"
    )
    install_parser.add_argument(
        "--venv", default=DEFAULT_VENV, metavar="PATH", help=f"virtualenv path (default {DEFAULT_VENV})"
    )
    install_parser.add_argument(
        "--skip-venv", action="store_true", help="the agent is already installed in --venv by other means"
    )
    install_parser.add_argument("--upgrade", action="store_true", help="pip-install the checkout again")
    install_parser.set_defaults(handler=cmd_install)
    uninstall_parser = commands.add_parser("uninstall", help="remove what install added")
    uninstall_parser.add_argument(
        "--root", type=Path, default=Path("/"), metavar="DIR", help="the root install used"
    )
    uninstall_parser.add_argument("--purge", action="store_true", help="also the config, buffer and user")
    uninstall_parser.set_defaults(handler=cmd_uninstall)


def _finish(report_or_error: Report | InstallError) -> int:
    if isinstance(report_or_error, InstallError):
        print(f"voltgate-agent: {report_or_error}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(report_or_error.lines))
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    if not args.venv.startswith("/"):
        return _finish(InstallError(f"--venv {args.venv} must be an absolute path"))
    if not args.root.is_dir():
        return _finish(InstallError(f"--root {args.root} is not a directory"))
    target = Target(args.root, args.venv)
    try:
        return _finish(install(target, args.config, skip_venv=args.skip_venv, upgrade=args.upgrade))
    except InstallError as err:
        return _finish(err)
    except _NeedsVenvPython as switch:  # the venv exists now: carry on in it, from this checkout
        os.chdir(source_root())
        argv = [arg for arg in sys.argv[1:] if arg != "--upgrade"]  # pip ran already
        os.execv(switch.python, [str(switch.python), "-m", "agent.install", *argv])


def cmd_uninstall(args: argparse.Namespace) -> int:
    try:
        return _finish(uninstall(Target(args.root, DEFAULT_VENV), purge=args.purge))
    except InstallError as err:
        return _finish(err)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m agent.install", description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="command"))
    given = list(argv if argv is not None else sys.argv[1:])
    if not given or given[0] not in ("install", "uninstall"):
        given.insert(0, "install")  # `python3 -m agent.install [options]` installs
    args = parser.parse_args(given)
    sys.exit(args.handler(args))


if __name__ == "__main__":
    main()

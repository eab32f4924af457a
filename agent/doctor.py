"""`voltgate-agent doctor`: one screen that tells a field technician what is wrong with this gateway.

Each line is one check: `OK` with the facts, or `WARN`/`FAIL` and one sentence saying what to do. Facts
come from the running agent's `/health.json` when it answers ("live"), else from what can be read without
it ("offline": the config, the buffer opened read-only, sysfs and `ip`, a short listen on the buses and
the GPS port); the header says which. The broker is always checked with a real connect using the
configured TLS identity; CAN links, the buffer file, disk space are always read from the host.

Exit code (for scripts): 0 every check OK, 1 warnings only, 2 at least one failure (or no usable config).

Every check is a small pure function returning `(Status, message)`; `agent.doctor_probes` gathers the facts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Final

from agent import doctor_probes as probes
from agent.settings import AgentSettings, CanBusSettings, UplinkSettings

LISTEN_S: Final = 1.5  # offline: how long to listen on each bus and on the GPS port
FRAMES_STALE_S: Final = 5.0  # a live bus silent this long is worth a look
GPS_FIX_STALE_S: Final = 10.0  # receivers report once a second (NMEA 0183 default rate)
CLOCK_WARN_S: Final = 1.0  # host clock vs GPS time; the agent's plausibility window is clock.max_skew_s
OLD_UNSENT_MIN_S: Final = 300.0
DISK_FAIL_BYTES: Final = 16 * 1024 * 1024


class Status(IntEnum):
    OK = 0
    WARN = 1
    FAIL = 2


Result = tuple[Status, str]


@dataclass(frozen=True)
class Line:
    check: str
    status: Status
    message: str


def exit_code(lines: list[Line]) -> int:
    """0 all OK, 1 warnings only, 2 a failure."""
    return int(max((line.status for line in lines), default=Status.OK))


def render(lines: list[Line], header: list[str]) -> str:
    width = max((len(line.check) for line in lines), default=0)
    body = [f"{line.status.name:<4}  {line.check:<{width}}  {line.message}" for line in lines]
    return "\n".join([*header, *body]) + "\n"


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --- the checks: facts in, (status, message) out --------------------------------------------------------


def check_agent(
    endpoint: probes.Endpoint, pid: int | None, url: str, vehicle_id: str, metrics_enabled: bool = True
) -> Result:
    document = endpoint.document
    if document is not None and document.get("vehicle_id") == vehicle_id:
        if not document.get("healthy", False):
            stuck = float(document.get("committer_age_s") or 0)
            return Status.FAIL, (
                f"running (pid {document.get('pid')}) but its buffer committer is stuck ({stuck:.0f} s "
                "without a commit): restart it (systemctl restart voltgate-agent) and keep its log"
            )
        up = _age(float(document.get("uptime_s") or 0))
        return Status.OK, f"running (pid {document.get('pid')}, up {up}); facts from {url}"
    if document is not None:
        return Status.FAIL, (
            f"{url} answers for vehicle {document.get('vehicle_id')!r}, not {vehicle_id!r}: another "
            "agent owns this port; give each agent its own [metrics] port"
        )
    if pid is not None and not metrics_enabled:
        return (
            Status.OK,
            f"running (pid {pid}); [metrics] is disabled in the config, so facts are read offline",
        )
    if pid is not None:
        return Status.WARN, (
            f"running (pid {pid}) but {url} does not answer ({endpoint.problem}): the port is probably "
            "taken by another program (see the agent's log); free it or set another [metrics] port "
            "(facts below read offline)"
        )
    return Status.FAIL, (
        "not running: start it (systemctl start voltgate-agent) and check its log "
        "(journalctl -u voltgate-agent); facts below read offline"
    )


def check_can_link(bus: CanBusSettings, link: probes.LinkState | None) -> Result:
    """A SocketCAN link: present, up, at the configured bitrate, error-active."""
    name = bus.channel
    if link is None:
        return Status.FAIL, (
            f"interface {name} does not exist: check the CAN adapter is connected and its driver loaded "
            "(ip link show; dmesg)"
        )
    want = f" bitrate {bus.bitrate}" if bus.bitrate else ""
    if not link.up:
        return Status.FAIL, f"{name} is down: bring it up (ip link set {name} up type can{want})"
    if bus.bitrate and link.bitrate is not None and link.bitrate != bus.bitrate:
        return Status.FAIL, (
            f"{name} runs at {link.bitrate // 1000} kbit/s but the config says {bus.bitrate // 1000} "
            f"kbit/s: set it (ip link set {name} down; ip link set {name} up type can{want})"
        )
    counters = ""
    if link.tx_errors is not None or link.rx_errors is not None:
        counters = f", error counters tx {link.tx_errors or 0} rx {link.rx_errors or 0}"
    if link.bus_off_count:
        counters += f", bus-off {link.bus_off_count} times"
    state = (link.can_state or "").upper()
    rate = f"{link.bitrate // 1000} kbit/s" if link.bitrate else "bitrate unknown"
    facts = f"{name} up, {rate}, {state.lower() or 'state unknown'}{counters}"
    if state in ("BUS-OFF", "STOPPED"):
        return Status.FAIL, (
            f"{facts}: the controller has left the bus; check wiring, 120 ohm termination at both ends and "
            f"the bitrate, then restart it (ip link set {name} type can restart-ms 100)"
        )
    if state in ("ERROR-PASSIVE", "ERROR-WARNING"):
        return Status.WARN, (
            f"{facts}: the bus sees errors; check wiring, termination and that every node uses the "
            "same bitrate"
        )
    return Status.OK, facts


def check_frames_live(bus: str, kind: str, activity: Mapping[str, Any] | None) -> Result:
    """Frames arriving per bus, from the running agent's counts."""
    if activity is None:
        return Status.WARN, "the agent reports nothing for this bus yet: run doctor again in a few seconds"
    count = int(activity.get("count") or 0)
    if kind == "replay":
        return Status.OK, f"replay: {count} frames read"
    if activity.get("up") is False:
        return Status.FAIL, (
            f"the agent cannot open this bus ({count} frames so far): check the adapter and the "
            "interface/channel in the config; the agent retries with backoff"
        )
    age = activity.get("last_age_s")
    if age is None:
        return Status.FAIL, (
            "no frames since the agent started: check the vehicle is on (ignition), the CAN wiring "
            "(CAN-H/CAN-L, ground) and the bitrate"
        )
    if float(age) > FRAMES_STALE_S:
        return Status.WARN, (
            f"no frames for {_age(float(age))} ({count} before): vehicle switched off? else check "
            "the CAN wiring"
        )
    per_s = activity.get("per_s")
    rate = f"{float(per_s):.0f} frames/s" if per_s is not None else "frames arriving"
    return Status.OK, f"{rate} ({count} since start)"


def check_frames_offline(listen: probes.Listen) -> Result:
    if listen.error is not None:
        return Status.FAIL, f"cannot open the bus ({listen.error}): check the adapter and the config"
    if listen.count == 0:
        return Status.FAIL, (
            f"no frames in {listen.seconds:.1f} s: check the vehicle is on (ignition), the CAN wiring "
            "and the bitrate"
        )
    return Status.OK, f"{listen.count / listen.seconds:.0f} frames/s (listened {listen.seconds:.1f} s)"


def check_gps_live(activity: Mapping[str, Any] | None, port: str) -> Result:
    if activity is None or activity.get("up") is False:
        return Status.FAIL, f"the agent cannot open the GPS port {port}: check the receiver is plugged in"
    age = activity.get("last_age_s")
    if age is None:
        return Status.FAIL, (
            "no GPS fix since the agent started: check the antenna (sky view, cable) and the baudrate"
        )
    if float(age) > GPS_FIX_STALE_S:
        return Status.WARN, f"last GPS fix {_age(float(age))} ago: check the antenna's sky view and cable"
    return Status.OK, f"fix {float(age):.0f} s ago"


def check_gps_offline(listen: probes.Listen, port: str) -> Result:
    if listen.error is not None:
        return Status.FAIL, f"cannot open the GPS port {port} ({listen.error}): check the receiver"
    if listen.count == 0:
        return Status.FAIL, (
            f"no NMEA fix from {port} in {listen.seconds:.1f} s: check the receiver, the port and baudrate"
        )
    if listen.valid_fixes == 0:
        return Status.WARN, (
            "the receiver answers but has no position fix: give the antenna a clear view of the sky"
        )
    return Status.OK, f"{listen.valid_fixes} fixes in {listen.seconds:.1f} s"


def check_clock(host_minus_gps_s: float | None, max_skew_s: float) -> Result:
    if host_minus_gps_s is None or not math.isfinite(host_minus_gps_s):
        return Status.WARN, "cannot compare the host clock with GPS time yet: no trusted GPS fix"
    off = abs(host_minus_gps_s)
    facts = f"host clock {host_minus_gps_s:+.2f} s off GPS time"
    if off >= max_skew_s:
        return Status.FAIL, (
            f"{facts}, beyond the agent's {max_skew_s:g} s plausibility window: fix time sync "
            "(timedatectl; chrony with the GPS as a source)"
        )
    if off >= CLOCK_WARN_S:
        return Status.WARN, f"{facts}: check time sync (timedatectl status)"
    return Status.OK, facts


def check_broker(probe: probes.BrokerProbe, identity: str) -> Result:
    where = f"{probe.host}:{probe.port}"
    if probe.stage == "ok":
        return Status.OK, f"{where} accepted {identity} (CONNACK)"
    action = {
        "dns": f"cannot resolve {probe.host} ({probe.detail}): check broker_url in [uplink] and DNS",
        "tcp": (
            f"cannot connect to {where} ({probe.detail}): check broker_url in [uplink], that the broker "
            "runs, and the network (modem, APN, firewall)"
        ),
        "timeout": f"{where}: {probe.detail}: check the network (modem signal, APN, firewall)",
        "tls": (
            f"TLS with {where} failed ({probe.detail}): check ca_file, cert_file and key_file in "
            "[uplink], that the certificate has not expired, and the host clock"
        ),
        "refused": (
            f"{where} refused {identity} ({probe.detail}): check the client certificate or username "
            "and password are registered with the broker"
        ),
    }.get(probe.stage, f"{where}: {probe.detail}: check [uplink] and the broker's log")
    return Status.FAIL, action


def check_last_ack(age_s: float | None, uptime_s: float | None, rows: float | None, limit_s: float) -> Result:
    """The cloud's last commit acknowledgement: the receiver stores what this bus sends."""
    if age_s is None:
        if not rows:
            return Status.OK, "none needed: nothing waiting in the buffer"
        if uptime_s is not None and uptime_s < limit_s:
            return Status.OK, f"none yet (agent up {_age(uptime_s)})"
        return Status.WARN, (
            "no commit acknowledgement from the cloud: samples stay buffered; check the cloud "
            "receiver runs (ask the fleet operator)"
        )
    if age_s > limit_s and rows:
        return Status.WARN, (
            f"last commit acknowledgement {_age(age_s)} ago while samples wait: check the broker line "
            "above and that the cloud receiver runs"
        )
    return Status.OK, f"last commit acknowledgement {_age(age_s)} ago"


def check_buffer(
    rows: float | None,
    oldest_age_s: float | None,
    disk_bytes: float,
    max_bytes: int,
    old_s: float,
    problem: str | None = None,
) -> Result:
    if rows is None:
        return Status.WARN, (
            f"cannot read the buffer ({problem}): check [buffer] path and its permissions"
            if problem
            else "no buffer file yet: the agent creates it when it starts"
        )
    facts = f"{_bytes(disk_bytes)} of {_bytes(max_bytes)}, {int(rows)} records waiting"
    if oldest_age_s is not None and rows:
        facts += f", oldest unsent {_age(max(0.0, oldest_age_s))} old"
    if disk_bytes > 0.9 * max_bytes:
        return Status.WARN, (
            f"{facts}: nearly full, the oldest routine samples are being evicted; restore the uplink "
            "(see the broker line)"
        )
    if rows and oldest_age_s is not None and oldest_age_s > old_s:
        return Status.WARN, (
            f"{facts}: samples are not leaving; check the broker and acknowledgement lines "
            "(a recorded log replayed from the past also shows here)"
        )
    return Status.OK, facts


def check_models(enabled: bool, configured: int, loaded: Mapping[str, str], problems: list[str]) -> Result:
    if not enabled:
        return Status.OK, "inference disabled in the config"
    names = ", ".join(f"{name} {version}" for name, version in sorted(loaded.items()))
    if problems:
        return Status.FAIL, (
            f"{problems[0]}: reinstall the model or let fleet control roll back"
            + (f" ({len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    if len(loaded) < configured:
        return Status.WARN, (
            f"{len(loaded)} of {configured} models loaded ({names or 'none'}): see the agent's log for "
            "the refused one"
        )
    return Status.OK, names or "no models configured"


def check_disk(disk: probes.DiskFacts | None, buffer_disk_bytes: int, max_bytes: int) -> Result:
    if disk is None:
        return Status.WARN, "cannot measure the disk of the buffer: check the buffer path"
    facts = f"{_bytes(disk.free_bytes)} free on {disk.path}"
    if disk.free_bytes < DISK_FAIL_BYTES:
        return Status.FAIL, f"{facts}: the disk is full; free space (old logs: journalctl --vacuum-size)"
    room = disk.free_bytes + buffer_disk_bytes
    if room < max_bytes:
        return Status.WARN, (
            f"{facts}: the buffer cannot grow to its {_bytes(max_bytes)} cap and will evict sooner; "
            "free space or lower [buffer] max_bytes"
        )
    return Status.OK, facts


# --- running every check ----------------------------------------------------------------------------------


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)

    def add(self, check: str, result: Result) -> None:
        self.lines.append(Line(check, *result))


def diagnose(settings: AgentSettings, config: Path, *, listen_s: float = LISTEN_S) -> Report:
    """Gather the facts (probes run side by side) and judge them, in screen order."""
    report = Report()
    url = probes.health_url(settings)
    endpoint = (
        probes.fetch_health(url) if settings.metrics.enabled else probes.Endpoint(None, "metrics disabled")
    )
    document = (
        endpoint.document if (endpoint.document or {}).get("vehicle_id") == settings.vehicle_id else None
    )
    live = document is not None
    pid = None if live else probes.agent_pid(config)
    report.header = [
        f"voltgate doctor: vehicle {settings.vehicle_id}, config {config}",
        "facts: live, from the running agent" if live else "facts: offline (agent not answering)",
    ]
    report.add("agent", check_agent(endpoint, pid, url, settings.vehicle_id, settings.metrics.enabled))
    listen_offline = pid is None and not live  # a running agent owns serial ports: never listen beside it

    with ThreadPoolExecutor(max_workers=8) as pool:
        links = {
            bus.name: pool.submit(probes.read_link, bus.channel)
            for bus in settings.can
            if bus.interface == "socketcan"
        }
        listens = (
            {bus.name: pool.submit(probes.listen_can, bus, listen_s) for bus in settings.can}
            if listen_offline
            else {}
        )
        gps_listen = (
            pool.submit(probes.listen_gps, settings.gps, listen_s)
            if listen_offline and settings.gps.enabled
            else None
        )
        broker = pool.submit(probes.probe_broker, settings.uplink, settings.vehicle_id)
        buffer = pool.submit(probes.read_buffer, settings.buffer.path)
        disk = pool.submit(probes.read_disk, settings.buffer.path)
        model_files = (
            pool.submit(probes.load_models, list(settings.inference.models))
            if settings.inference.enabled and not live
            else None
        )

        sources: dict[str, Any] = (document or {}).get("sources") or {}
        for bus in settings.can:
            if bus.name in links:
                report.add(f"can {bus.name} link", check_can_link(bus, links[bus.name].result()))
            if live:
                report.add(
                    f"can {bus.name} frames", check_frames_live(bus.name, "live", sources.get(bus.name))
                )
            elif bus.name in listens:
                report.add(f"can {bus.name} frames", check_frames_offline(listens[bus.name].result()))
            else:
                report.add(
                    f"can {bus.name} frames",
                    (Status.WARN, "not listened: the agent runs but does not answer (see the agent line)"),
                )
        for replay in settings.replay:
            if live:
                report.add(
                    f"replay {replay.name}",
                    check_frames_live(replay.name, "replay", sources.get(replay.name)),
                )
            elif replay.path.is_file():
                report.add(f"replay {replay.name}", (Status.OK, f"log {replay.path} present"))
            else:
                report.add(
                    f"replay {replay.name}",
                    (Status.FAIL, f"log {replay.path} does not exist: fix [[replay]] path"),
                )

        offset: float | None = None
        if settings.gps.enabled:
            if live:
                report.add("gps", check_gps_live(sources.get("gps"), settings.gps.port))
                offset = (document or {}).get("host_clock_minus_gps_s")
            elif gps_listen is not None:
                heard = gps_listen.result()
                report.add("gps", check_gps_offline(heard, settings.gps.port))
                offset = heard.host_minus_gps_s
            else:
                report.add("gps", (Status.WARN, "not listened: the agent runs but does not answer"))
            report.add("clock", check_clock(offset, settings.clock.max_skew_s))

        probe = broker.result()
        report.add("broker", check_broker(probe, identity(settings.uplink)))

        facts = buffer.result()
        uplink: Mapping[str, Any] = (document or {}).get("uplink") or {}
        buffer_doc: Mapping[str, Any] = (document or {}).get("buffer") or {}
        now = time.time()
        # The buffer file itself is current (the agent's gauges lag up to 5 s); read-only beside it is safe.
        rows: float | None = facts.rows
        oldest = None if facts.oldest_ts_s is None else now - facts.oldest_ts_s
        if rows is None and live:
            rows, oldest = buffer_doc.get("rows"), buffer_doc.get("oldest_unsent_age_s")
        ack_age = uplink.get("last_ack_age_s") if live else None
        if ack_age is None and probe.last_ack_ts_s is not None:
            ack_age = max(0.0, now - probe.last_ack_ts_s)
        up = settings.uplink
        limit = max(OLD_UNSENT_MIN_S, 2 * (up.batch_max_age_s + up.ack_timeout_s))
        uptime = (document or {}).get("uptime_s")
        report.add("cloud ack", check_last_ack(ack_age, uptime, rows, limit))
        report.add(
            "buffer",
            check_buffer(rows, oldest, facts.disk_bytes, settings.buffer.max_bytes, limit, facts.error),
        )

        if live:
            loaded: dict[str, str] = dict((document or {}).get("models") or {})
            problems: list[str] = []
        else:
            results = model_files.result() if model_files is not None else []
            loaded = {text.split(" ")[0]: text.split(" ")[1] for _, text, err in results if err is None}
            problems = [f"model {path}: {err}" for path, _, err in results if err is not None]
        report.add(
            "models",
            check_models(settings.inference.enabled, len(settings.inference.models), loaded, problems),
        )
        report.add("disk", check_disk(disk.result(), facts.disk_bytes, settings.buffer.max_bytes))
    return report


def identity(uplink: UplinkSettings) -> str:
    """The identity the broker line names: the client certificate, the username, or anonymous."""
    if uplink.cert_file is not None:
        return f"client certificate {uplink.cert_file.name}"
    if uplink.username:
        return f"user {uplink.username}"
    return "an anonymous client"

"""The voltgate demo: a simulated bus driving, its data flowing end to end, progress shown live.

    python scripts/demo.py [--duration 10m] [--fault SPEC] [--keep]

Composes the three programs as separate processes, as in the field:
  voltgate-sim run     the bus: CAN over SLCAN on a pty (a USB-CAN adapter's serial protocol), NMEA on a pty
  voltgate-agent run   reads both, decodes, buffers in SQLite, uplinks over MQTT (if Mosquitto answers)
  voltgate-cloud run   stores into PostgreSQL (if it answers), acknowledges what it stored on the bus's
                       downlink (only then does the agent delete those rows), serves the fleet page
Everything it writes stays under var/demo/. Ctrl-C stops all three in order (SIGTERM, staged shutdown).

The bus runs in real time from now, as on the road: over SLCAN, python-can stamps each CAN frame with the
host's receive time (the Lawicel protocol's own timestamps are not read), so a bus simulated faster than
real time would give its CAN samples wall-clock times and its GPS samples simulated ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from simulator.live import SimWatcher, start_live_bus

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "var" / "demo"
BIN = Path(sys.executable).parent
PG_DSN = os.environ.get("VOLTGATE_DEMO_PG_DSN", "postgresql://127.0.0.1:5432/test")
MQTT_HOST, MQTT_PORT = "127.0.0.1", int(os.environ.get("VOLTGATE_DEMO_MQTT_PORT", "1883"))
AGENT_METRICS_PORT, CLOUD_METRICS_PORT, WEB_PORT = 9118, 9119, 8088
VEHICLE, FLEET, SCHEMA = "demo-bus-01", "demo", "voltgate_demo"
LEDS = WORK / "leds"  # laid out like /sys/class/leds, so the driver's alert lamps can be watched
LED_NAMES = {"amber": "voltgate:amber:alert", "red": "voltgate:red:alert"}


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def now_in_nairobi() -> tuple[str, str]:
    """The simulation start (now, UTC) and the bus's departure (now, local time in Nairobi, UTC+3)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    local = now + dt.timedelta(hours=3)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ"), local.strftime("%H:%M")


def write_cloud_config(path: Path) -> None:
    path.write_text(
        f"""[mqtt]
host = "{MQTT_HOST}"
port = {MQTT_PORT}
client_id = "voltgate-demo-cloud"
shared_group = "voltgate-demo"

[database]
dsn = "{PG_DSN}"
schema = "{SCHEMA}"

[metrics]
port = {CLOUD_METRICS_PORT}

[web]
host = "127.0.0.1"
port = {WEB_PORT}
"""
    )


def make_leds() -> None:
    for name in LED_NAMES.values():
        led = LEDS / name
        led.mkdir(parents=True, exist_ok=True)
        (led / "brightness").write_text("0\n")
        (led / "max_brightness").write_text("1\n")
        (led / "trigger").write_text("[none] timer\n")


def led_states() -> str:
    states = []
    for colour, name in LED_NAMES.items():
        led = LEDS / name
        try:
            trigger = (led / "trigger").read_text()
            on = (led / "brightness").read_text().strip() not in ("", "0")
        except OSError:
            continue
        # the kernel echoes triggers as "none [timer] ..."; this plain file holds what the agent wrote
        blinking = "[timer]" in trigger or trigger.strip() == "timer"
        state = "blink" if blinking else ("on" if on else "off")
        states.append(f"{colour} {state}")
    return ", ".join(states)


def write_agent_config(path: Path, slcan_pty: str, nmea_pty: str) -> None:
    # Without a reachable broker the uplink keeps retrying with backoff while the agent buffers.
    path.write_text(
        f"""vehicle_id = "{VEHICLE}"
log_format = "text"

[[can]]
name = "bus"
interface = "slcan"
channel = "{slcan_pty}"
bitrate = 500000
hardware_filters = false

[gps]
enabled = true
port = "{nmea_pty}"
baudrate = 9600

[buffer]
path = "{WORK / "buffer.sqlite3"}"

[uplink]
broker_url = "mqtt://{MQTT_HOST}:{MQTT_PORT}"
fleet_id = "{FLEET}"
batch_max_age_s = 5.0

[inference]
utc_offset_h = 3.0

[alerts]
led_root = "{LEDS}"

[metrics]
enabled = true
port = {AGENT_METRICS_PORT}
"""
    )


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    total = None
    for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
        total = (total or 0.0) + float(m.group(1))
    return total


def buffered_rows() -> int | None:
    try:
        with sqlite3.connect(f"file:{WORK / 'buffer.sqlite3'}?mode=ro", uri=True, timeout=0.2) as db:
            return int(db.execute("SELECT count(*) FROM records").fetchone()[0])
    except sqlite3.Error:
        return None


def stored_rows() -> int | None:
    try:
        import psycopg
    except ImportError:
        return None
    try:
        with psycopg.connect(PG_DSN, connect_timeout=1) as conn:
            # only this bus: the receiver's shared subscription also carries any other fleet's traffic
            row = conn.execute(
                f"SELECT coalesce(sum(n), 0) FROM {SCHEMA}.sample_blocks WHERE vehicle_id = %s", (VEHICLE,)
            ).fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


def drop_demo_schema() -> None:
    """Each run starts from a fresh schema, so what the page and the counts show is this run's bus."""
    try:
        import psycopg
    except ImportError:
        return
    with psycopg.connect(PG_DSN, connect_timeout=2, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def stop(proc: subprocess.Popen[str] | None, name: str, timeout_s: float = 35.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop within {timeout_s:.0f} s; killing it", flush=True)
        proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", default="10m", help="how long the bus drives (default 10m)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the previous run's buffer and database rows"
    )
    parser.add_argument(
        "--fault",
        default="insulation_degradation@1m=60",
        help="a fault to inject, as voltgate-sim takes it ('' for none; default: the HV insulation degrades)",
    )
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    if not args.keep:
        for leftover in WORK.glob("buffer.sqlite3*"):
            leftover.unlink()
    make_leds()
    broker = reachable(MQTT_HOST, MQTT_PORT)
    database = reachable("127.0.0.1", 5432)
    print(f"broker {MQTT_HOST}:{MQTT_PORT}: {'up' if broker else 'not reachable: agent will only buffer'}")
    print(f"PostgreSQL 127.0.0.1:5432: {'up' if database else 'not reachable: no cloud receiver'}")

    procs: list[tuple[str, subprocess.Popen[str]]] = []
    cloud = None
    try:
        if broker and database:
            if not args.keep:
                drop_demo_schema()
            write_cloud_config(WORK / "cloud.toml")
            migrate = subprocess.run(
                [BIN / "voltgate-cloud", "migrate", "--config", WORK / "cloud.toml"],
                capture_output=True,
                text=True,
                check=False,
            )
            if migrate.returncode == 0:
                cloud_log = (WORK / "cloud.log").open("w")
                cloud = subprocess.Popen(
                    [BIN / "voltgate-cloud", "run", "--config", WORK / "cloud.toml"],
                    stdout=cloud_log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                procs.append(("cloud", cloud))
                print(
                    f"cloud receiver: running (log {WORK / 'cloud.log'}), fleet page http://127.0.0.1:{WEB_PORT}/"
                )
            else:
                print(f"cloud receiver: migration failed: {migrate.stderr.strip() or migrate.stdout.strip()}")

        start, departure = now_in_nairobi()
        sim = start_live_bus(
            ["--realtime", "--duration", args.duration, "--status-every", "10", "--start", start,
             "--departure", departure, *(["--fault", args.fault] if args.fault else [])]
        )  # fmt: skip
        procs.append(("simulator", sim))
        watcher = SimWatcher(sim)
        watcher.start()
        if not watcher.ready.wait(30):
            print("the simulator did not open its pseudo-terminals; giving up")
            return 1

        write_agent_config(WORK / "agent.toml", watcher.ptys["slcan-pty"], watcher.ptys["nmea-pty"])
        agent_log = (WORK / "agent.log").open("w")
        agent = subprocess.Popen(
            [BIN / "voltgate-agent", "run", "--config", WORK / "agent.toml"],
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(("agent", agent))
        print(f"bus {VEHICLE} leaving the depot on Nairobi route 102 at {departure} local time, in real time")
        print(f"agent: log {WORK / 'agent.log'}, metrics http://127.0.0.1:{AGENT_METRICS_PORT}/metrics\n")

        alerts_seen = 0
        while sim.poll() is None:
            time.sleep(10)
            driver_lines = [
                line for line in (WORK / "agent.log").read_text().splitlines() if "driver alert" in line
            ]
            for line in driver_lines[alerts_seen:]:
                print("  DRIVER " + line.split("driver alert", 1)[1].strip(), flush=True)
            alerts_seen = len(driver_lines)
            if agent.poll() is not None:
                print(f"the agent stopped (exit {agent.returncode}); see {WORK / 'agent.log'}")
                return 1
            frames = metric(AGENT_METRICS_PORT, "voltgate_can_frames_decoded_total")
            kept = metric(AGENT_METRICS_PORT, "voltgate_buffer_records_committed_total")
            sent = metric(AGENT_METRICS_PORT, "voltgate_uplink_records_total")
            in_flight = metric(AGENT_METRICS_PORT, "voltgate_uplink_inflight_rows")
            unsent = buffered_rows()
            stored = stored_rows() if cloud else None
            print(
                f"bus {watcher.last_status[:72]:<72} | agent frames {frames or 0:>7.0f} "
                f"kept {kept or 0:>6.0f} "
                f"buffered {unsent if unsent is not None else '-':>6} (in flight {in_flight or 0:>5.0f}) "
                f"uplinked {sent or 0:>8.0f} "
                f"| db rows {stored if stored is not None else '-'} | LEDs {led_states() or '-'}",
                flush=True,
            )
        print("\nthe drive is over; stopping the agent and the receiver")
        return 0
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        for name, proc in reversed(procs):
            stop(proc, name)
        if cloud is not None:
            total = stored_rows()
            if total is not None:
                print(f"samples stored in PostgreSQL ({SCHEMA}.samples): {total}")


if __name__ == "__main__":
    sys.exit(main())

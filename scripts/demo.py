"""The voltgate demo: a simulated bus driving, its data flowing end to end, progress shown live.

    python scripts/demo.py [--duration 10m] [--fault SPEC] [--keep] [--pg-dsn DSN] [--mqtt-port N] ...

Composes the three programs as separate processes, as in the field:
  voltgate-sim run     the bus: CAN over SLCAN on a pty (a USB-CAN adapter's serial protocol), NMEA on a pty
  voltgate-agent run   reads both, decodes, buffers in SQLite, uplinks over MQTT (if Mosquitto answers)
  voltgate-cloud run   stores into PostgreSQL (if it answers), acknowledges what it stored on the bus's
                       downlink (only then does the agent delete those rows), serves the fleet page
Everything it writes stays under var/demo/ (--work-dir). Ctrl-C stops all three in order (SIGTERM, staged
shutdown).

Before it starts anything it checks what it needs and says in one sentence what is missing: without
Mosquitto the agent only buffers and no receiver runs; without a usable PostgreSQL no receiver runs; a
database that does not exist is created when the server answers and the user may create it. A program
that stops (a busy port, a crash) is reported in one sentence with its log file. The checks and the
child processes live beside this file, in `demo_prerequisites.py` and `demo_programs.py`.

The bus runs in real time from now, as on the road: over SLCAN, python-can stamps each CAN frame with the
host's receive time (the Lawicel protocol's own timestamps are not read), so a bus simulated faster than
real time would give its CAN samples wall-clock times and its GPS samples simulated ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from demo_prerequisites import database_problem, reachable
from demo_programs import Program, stop

from simulator.live import SimWatcher, start_live_bus

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MQTT_HOST = "127.0.0.1"
VEHICLE, FLEET, SCHEMA = "demo-bus-01", "demo", "voltgate_demo"
LED_NAMES = {"amber": "voltgate:amber:alert", "red": "voltgate:red:alert"}
# The local socket first (Debian's PostgreSQL lets a user in there by their login name), then TCP.
DEFAULT_PG_DSN = "host=/var/run/postgresql,127.0.0.1 port=5432 dbname=test"


@dataclass(frozen=True)
class Setup:
    """What the command line chose: where things live and which ports and database they use."""

    work: Path
    pg_dsn: str
    mqtt_port: int
    web_port: int
    agent_metrics_port: int
    cloud_metrics_port: int

    @property
    def leds(self) -> Path:
        return self.work / "leds"  # laid out like /sys/class/leds, so the driver's alert lamps can be watched


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("VOLTGATE_DEMO_PG_DSN", DEFAULT_PG_DSN),
        help="the PostgreSQL database (env VOLTGATE_DEMO_PG_DSN; created if missing and allowed)",
    )
    parser.add_argument(
        "--mqtt-port",
        type=int,
        default=int(os.environ.get("VOLTGATE_DEMO_MQTT_PORT", "1883")),
        help="Mosquitto's port on 127.0.0.1 (env VOLTGATE_DEMO_MQTT_PORT; default 1883)",
    )
    parser.add_argument("--web-port", type=int, default=8088, help="the fleet page's port (default 8088)")
    parser.add_argument("--agent-metrics-port", type=int, default=9118, help="default 9118")
    parser.add_argument("--cloud-metrics-port", type=int, default=9119, help="default 9119")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "demo", help="default var/demo")
    parser.add_argument(
        "--status-every", type=float, default=10.0, help="seconds between status lines (default 10)"
    )
    return parser.parse_args(argv)


def drop_demo_schema(dsn: str) -> None:
    """Each run starts from a fresh schema, so what the page and the counts show is this run's bus."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


# --- the configurations ---------------------------------------------------------------------------------


def now_in_nairobi() -> tuple[str, str]:
    """The simulation start (now, UTC) and the bus's departure (now, local time in Nairobi, UTC+3)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    local = now + dt.timedelta(hours=3)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ"), local.strftime("%H:%M")


def write_cloud_config(path: Path, setup: Setup) -> None:
    path.write_text(
        f"""[mqtt]
host = "{MQTT_HOST}"
port = {setup.mqtt_port}
client_id = "voltgate-demo-cloud"
shared_group = "voltgate-demo"

[database]
dsn = "{setup.pg_dsn}"
schema = "{SCHEMA}"

[metrics]
port = {setup.cloud_metrics_port}

[web]
host = "127.0.0.1"
port = {setup.web_port}
"""
    )


def write_agent_config(path: Path, setup: Setup, slcan_pty: str, nmea_pty: str) -> None:
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
path = "{setup.work / "buffer.sqlite3"}"

[uplink]
broker_url = "mqtt://{MQTT_HOST}:{setup.mqtt_port}"
fleet_id = "{FLEET}"
batch_max_age_s = 5.0

[inference]
utc_offset_h = 3.0

[alerts]
led_root = "{setup.leds}"

[metrics]
enabled = true
port = {setup.agent_metrics_port}
"""
    )


def start_cloud(setup: Setup, keep: bool) -> Program | None:
    """Migrates the demo schema and starts the receiver; None (said why) when it cannot run."""
    if not keep:
        drop_demo_schema(setup.pg_dsn)
    config = setup.work / "cloud.toml"
    write_cloud_config(config, setup)
    migrate = subprocess.run(
        [BIN / "voltgate-cloud", "migrate", "--config", config], capture_output=True, text=True, check=False
    )
    if migrate.returncode != 0:
        said = (migrate.stderr.strip() or migrate.stdout.strip()).splitlines()[-1:]
        print(f"cloud receiver: the migration failed: {''.join(said)}")
        return None
    cloud = Program.start(
        "cloud receiver", [BIN / "voltgate-cloud", "run", "--config", config], setup.work / "cloud.log"
    )
    if (reason := cloud.wait_until_answering(f"http://127.0.0.1:{setup.web_port}/api/health")) is not None:
        print(reason, flush=True)
        stop(cloud.proc, cloud.name)
        return None
    print(
        f"cloud receiver: running (log {cloud.log}), fleet page http://127.0.0.1:{setup.web_port}/",
        flush=True,
    )
    return cloud


# --- what the status line shows ---------------------------------------------------------------------------


def make_leds(leds: Path) -> None:
    for name in LED_NAMES.values():
        led = leds / name
        led.mkdir(parents=True, exist_ok=True)
        (led / "brightness").write_text("0\n")
        (led / "max_brightness").write_text("1\n")
        (led / "trigger").write_text("[none] timer\n")


def led_states(leds: Path) -> str:
    states = []
    for colour, name in LED_NAMES.items():
        led = leds / name
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


def buffered_rows(work: Path) -> int | None:
    try:
        with sqlite3.connect(f"file:{work / 'buffer.sqlite3'}?mode=ro", uri=True, timeout=0.2) as db:
            return int(db.execute("SELECT count(*) FROM records").fetchone()[0])
    except sqlite3.Error:
        return None


def stored_rows(dsn: str) -> int | None:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=1) as conn:
            # only this bus: the receiver's shared subscription also carries any other fleet's traffic
            row = conn.execute(
                f"SELECT coalesce(sum(n), 0) FROM {SCHEMA}.sample_blocks WHERE vehicle_id = %s", (VEHICLE,)
            ).fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


def print_driver_alerts(agent_log: Path, seen: int) -> int:
    driver_lines = [line for line in agent_log.read_text().splitlines() if "driver alert" in line]
    for line in driver_lines[seen:]:
        print("  DRIVER " + line.split("driver alert", 1)[1].strip(), flush=True)
    return len(driver_lines)


def status_line(setup: Setup, watcher: SimWatcher, cloud: Program | None) -> str:
    port = setup.agent_metrics_port
    frames = metric(port, "voltgate_can_frames_decoded_total")
    kept = metric(port, "voltgate_buffer_records_committed_total")
    sent = metric(port, "voltgate_uplink_records_total")
    in_flight = metric(port, "voltgate_uplink_inflight_rows")
    unsent = buffered_rows(setup.work)
    stored = stored_rows(setup.pg_dsn) if cloud else None
    return (
        f"bus {watcher.last_status[:72]:<72} | agent frames {frames or 0:>7.0f} "
        f"kept {kept or 0:>6.0f} "
        f"buffered {unsent if unsent is not None else '-':>6} (in flight {in_flight or 0:>5.0f}) "
        f"uplinked {sent or 0:>8.0f} "
        f"| db rows {stored if stored is not None else '-'} | LEDs {led_states(setup.leds) or '-'}"
    )


# --- the run ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = Setup(
        args.work_dir.resolve(),
        args.pg_dsn,
        args.mqtt_port,
        args.web_port,
        args.agent_metrics_port,
        args.cloud_metrics_port,
    )
    setup.work.mkdir(parents=True, exist_ok=True)
    if not args.keep:
        for leftover in setup.work.glob("buffer.sqlite3*"):
            leftover.unlink()
    make_leds(setup.leds)

    broker = reachable(MQTT_HOST, setup.mqtt_port)
    if broker:
        print(f"Mosquitto {MQTT_HOST}:{setup.mqtt_port}: up")
    else:
        print(
            f"Mosquitto does not answer on {MQTT_HOST}:{setup.mqtt_port} (sudo apt-get install mosquitto):"
            " the agent will only buffer, and no cloud receiver runs"
        )
    database = database_problem(setup.pg_dsn)
    if database is None:
        print("PostgreSQL: up")
    else:
        print(f"{database}: no cloud receiver")

    programs: list[Program] = []
    cloud = None
    try:
        if broker and database is None and (cloud := start_cloud(setup, args.keep)) is not None:
            programs.append(cloud)

        start, departure = now_in_nairobi()
        sim = start_live_bus(
            ["--realtime", "--duration", args.duration, "--status-every", "10", "--start", start,
             "--departure", departure, *(["--fault", args.fault] if args.fault else [])]
        )  # fmt: skip
        simulator = Program("simulator", sim, setup.work / "simulator.log")  # its stderr, kept by the watcher
        programs.append(simulator)
        watcher = SimWatcher(sim, log=simulator.log)
        watcher.start()
        while not watcher.ready.wait(0.5):
            if sim.poll() is not None:
                watcher.join(5.0)  # until it has kept the simulator's last words
                print(simulator.stopped(), flush=True)
                return 1

        write_agent_config(
            setup.work / "agent.toml", setup, watcher.ptys["slcan-pty"], watcher.ptys["nmea-pty"]
        )
        agent = Program.start(
            "agent",
            [BIN / "voltgate-agent", "run", "--config", setup.work / "agent.toml"],
            setup.work / "agent.log",
        )
        programs.append(agent)
        metrics_url = f"http://127.0.0.1:{setup.agent_metrics_port}/metrics"
        if (reason := agent.wait_until_answering(metrics_url)) is not None:
            print(reason, flush=True)
            return 1
        print(f"bus {VEHICLE} leaving the depot on Nairobi route 102 at {departure} local time, in real time")
        print(f"agent: log {agent.log}, metrics {metrics_url}\n", flush=True)

        alerts_seen = 0
        while sim.poll() is None:
            time.sleep(args.status_every)
            alerts_seen = print_driver_alerts(agent.log, alerts_seen)
            if (reason := agent.stopped()) is not None:
                print(reason, flush=True)
                return 1
            if cloud is not None and (reason := cloud.stopped()) is not None:
                print(f"{reason}; the agent goes on buffering", flush=True)
                cloud = None
            print(status_line(setup, watcher, cloud), flush=True)
        if sim.returncode != 0:
            watcher.join(5.0)
            print(simulator.stopped(), flush=True)
            return 1
        print("\nthe drive is over; stopping the agent and the receiver")
        return 0
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        for program in reversed(programs):
            stop(program.proc, program.name)
        if cloud is not None:
            total = stored_rows(setup.pg_dsn)
            if total is not None:
                print(f"samples stored in PostgreSQL (schema {SCHEMA}): {total}")


if __name__ == "__main__":
    sys.exit(main())

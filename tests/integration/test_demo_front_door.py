"""The README's first command, `python scripts/demo.py`, where what it needs is missing or taken.

Each test runs the real demo (simulator, agent and, where it can, the receiver as processes) for a short
drive against the real PostgreSQL and Mosquitto, with its own work directory, ports and database, and
reads what it printed.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from .conftest import MQTT_HOST, MQTT_PORT, PG_DSN, service_unavailable, unique_id

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_demo(
    work: Path,
    dsn: str,
    *,
    web_port: int | None = None,
    mqtt_port: int = MQTT_PORT,
    fault: str = "",
    exit_status: int = 0,
) -> str:
    """The demo's output for a 10-second drive; it exits 0 when it could run what it can."""
    if MQTT_HOST != "127.0.0.1":
        pytest.skip("the demo talks to Mosquitto on 127.0.0.1 only")
    command = [
        sys.executable, str(DEMO), "--duration", "10s", "--fault", fault, "--status-every", "2",
        "--work-dir", str(work), "--pg-dsn", dsn, "--mqtt-port", str(mqtt_port),
        "--web-port", str(web_port or free_port()),
        "--agent-metrics-port", str(free_port()), "--cloud-metrics-port", str(free_port()),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == exit_status, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    return done.stdout


def last_count(output: str, label: str) -> int:
    counts = re.findall(rf"\b{label}\s+(\d+)\b", output)
    assert counts, output
    return int(counts[-1])


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    try:
        conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.Error as err:
        service_unavailable(f"PostgreSQL not reachable at {PG_DSN}: {str(err).strip().splitlines()[0]}")
    with conn:
        yield conn


@pytest.fixture
def missing_database(admin: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    """The name of a database that does not exist on the server (dropped after the test if made)."""
    name = unique_id("demo_")
    yield name
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(admin: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_a_missing_database_is_created_and_the_bus_data_reaches_it(
    tmp_path: Path, admin: psycopg.Connection[tuple[object, ...]], missing_database: str
) -> None:
    # GIVEN PostgreSQL answers, the user may create databases, but the DSN's database does not exist
    dsn = conninfo.make_conninfo(PG_DSN, dbname=missing_database)

    output = run_demo(tmp_path, dsn)

    # THEN the demo creates it, runs the receiver and the bus's samples are stored there
    assert f"created the database '{missing_database}'" in output
    assert "cloud receiver: running" in output
    assert database_exists(admin, missing_database)
    stored = re.search(r"samples stored in PostgreSQL \(schema voltgate_demo\): (\d+)", output)
    assert stored is not None and int(stored.group(1)) > 0, output


def test_a_busy_web_port_is_reported_and_the_agent_runs_on(tmp_path: Path, missing_database: str) -> None:
    # GIVEN the fleet page's port is held by another listener
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        output = run_demo(tmp_path, conninfo.make_conninfo(PG_DSN, dbname=missing_database), web_port=port)

    # THEN the receiver's death is said in one line with its reason and log, never that it runs
    [said] = [line for line in output.splitlines() if "the cloud receiver stopped" in line]
    assert "address already in use" in said
    assert said.endswith(f"log {tmp_path / 'cloud.log'}")
    assert "cloud receiver: running" not in output
    assert "db rows -" in output  # no count from a database nothing writes to
    assert last_count(output, "kept") > 0  # the agent decodes and buffers without the receiver


@pytest.fixture
def role_without_createdb(admin: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    role = unique_id("demo_user_")
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB").format(sql.Identifier(role)))
    yield role
    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_no_broker_and_a_database_the_user_may_not_create_are_said_and_the_agent_buffers(
    tmp_path: Path,
    admin: psycopg.Connection[tuple[object, ...]],
    missing_database: str,
    role_without_createdb: str,
) -> None:
    # GIVEN nothing listens on the Mosquitto port (a socket bound there, not listening, keeps it so)
    # AND the DSN's database does not exist and its user may not create databases
    dsn = conninfo.make_conninfo(PG_DSN, dbname=missing_database, user=role_without_createdb)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        mqtt_port = taken.getsockname()[1]

        output = run_demo(tmp_path, dsn, mqtt_port=mqtt_port)

    # THEN each is said in one sentence, no receiver starts, and the agent buffers what it decodes
    assert f"Mosquitto does not answer on 127.0.0.1:{mqtt_port}" in output
    [said] = [line for line in output.splitlines() if "may not create it" in line]
    assert f"'{missing_database}' does not exist" in said and said.endswith("no cloud receiver")
    assert not database_exists(admin, missing_database)
    assert "cloud receiver: running" not in output
    assert last_count(output, "kept") > 0
    assert last_count(output, "uplinked") == 0


def test_a_simulator_that_stops_is_said_with_its_log(tmp_path: Path) -> None:
    # GIVEN a fault the simulator refuses (and no broker, so that nothing else starts)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        output = run_demo(
            tmp_path, PG_DSN, mqtt_port=taken.getsockname()[1], fault="no_such_fault@1m", exit_status=1
        )

    # THEN one line says so, with the simulator's own reason and where its output is kept
    [said] = [line for line in output.splitlines() if "the simulator stopped" in line]
    assert said.startswith("the simulator stopped (exit 2): ")
    assert "no_such_fault" in said
    assert said.endswith(f"log {tmp_path / 'simulator.log'}")


def prerequisites() -> Any:
    sys.path.insert(0, str(DEMO.parent))
    try:
        import demo_prerequisites
    finally:
        sys.path.remove(str(DEMO.parent))
    return demo_prerequisites


def test_a_postgresql_port_where_nothing_listens_is_said_in_one_sentence() -> None:
    # GIVEN a port held by a socket that does not listen: connecting there is refused
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]

        said = prerequisites().database_problem(f"postgresql://127.0.0.1:{port}/test")

    assert said == f"PostgreSQL does not answer at 127.0.0.1:{port} (sudo apt-get install postgresql)"


def test_an_unknown_role_is_said_with_the_line_that_makes_it(
    admin: psycopg.Connection[tuple[object, ...]],
) -> None:
    # GIVEN the real server and a role it does not know
    role = unique_id("nobody_")
    dsn = conninfo.make_conninfo(PG_DSN, user=role)

    said = prerequisites().database_problem(dsn)

    assert said is not None and said.startswith("PostgreSQL at ")
    assert said.endswith(f"has no role '{role}' (sudo -u postgres createuser --createdb {role})")

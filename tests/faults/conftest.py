"""Fixtures of the fault suite: a `Rig` per test (its own Mosquitto, receiver, schema, agent and audited
buffer), the simulated bus recorded once per session, and a live bus on pseudo-terminals.

PostgreSQL is the shared one on 127.0.0.1:5432 (database `test`), a fresh schema per test; every
program is the real one, started as a process (see `harness`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.faults.audit import AuditResult, Database, judge, prepare_audited_buffer, settle
from tests.faults.harness import (
    REPO,
    AgentConfig,
    AgentProcess,
    LiveBus,
    Mosquitto,
    PgProxy,
    Program,
    Receiver,
    ReceiverConfig,
    free_port,
    metric,
    policy_off_catalog,
    start_tapped_live_bus,
)
from tests.integration import conftest as integration
from tests.integration.conftest import PG_DSN, service_unavailable, unique_id

RECORDED_S = 30  # seconds of simulated bus in the session's log (replayed at recorded speed)


@pytest.fixture(scope="session")
def recorded_bus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`voltgate-sim record`: RECORDED_S seconds of the 12 m bus as a candump log, stamped from a minute
    ago (the receiver refuses data older than its plausibility window)."""
    path = tmp_path_factory.mktemp("sim") / "bus.log"
    start = (datetime.now(UTC) - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", f"{RECORDED_S}s", "--seed", "7",
         "--start", start, "--out", str(path)],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def catalog_policy_off(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return policy_off_catalog(tmp_path_factory.mktemp("catalog"))


@pytest.fixture
def database_schema() -> Iterator[str]:
    """A fresh schema in the plain PostgreSQL test database, dropped afterwards (as the integration suite
    makes them). The fault suite runs on this flavour only: it proves delivery (nothing lost, nothing
    twice) across processes, kills and outages, which the database flavour does not change (the
    receiver's writes are the same SQL on both; tests/integration runs the store, the rollups and the
    reads on both), and a second pass would add its minutes to CI for no new fault."""
    with integration.fresh_schema("native") as db:
        yield db.schema


@dataclass
class Rig:
    """One test's fleet of one bus: broker, receiver (optionally behind a PgProxy), agent, audit."""

    directory: Path
    scenario: str
    broker: Mosquitto
    receiver: Receiver
    db: Database
    buffer_path: Path
    agent_config: AgentConfig
    proxy: PgProxy | None = None
    programs: list[Program] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    agent: AgentProcess | None = None

    @property
    def vehicle(self) -> str:
        return self.agent_config.vehicle_id

    def start_agent(self, **changes: object) -> AgentProcess:
        config = replace(self.agent_config, **changes) if changes else self.agent_config  # type: ignore[arg-type]
        path = config.write(self.directory / "agent.toml")
        agent = AgentProcess(path, self.directory / "agent.log")
        self.agent = agent
        self.programs.append(agent)
        return agent

    async def audit(
        self,
        *,
        plausible_ms: tuple[int, int] | None = None,
        timeout_s: float = 120.0,
        evictions_from_port: int | None = None,
    ) -> AuditResult:
        """Wait for the agent to drain (see `settle`), then count; prints the scenario's figures.
        `evictions_from_port`: the agent's metrics port, whose `voltgate_buffer_evictions_total` (rows
        evicted by design) is subtracted from the missing rows."""
        how = await settle(self.buffer_path, self.db, timeout_s=timeout_s)
        evicted = 0
        if evictions_from_port is not None:
            evicted = int(metric(evictions_from_port, "voltgate_buffer_evictions_total") or 0)
        plausible = None
        if plausible_ms is not None:
            low, high = plausible_ms

            def plausible(ts_ms: int) -> bool:
                return low <= ts_ms <= high

        result = judge(
            self.scenario, self.buffer_path, self.db, self.started, evicted=evicted, plausible=plausible
        )
        result.drain = how
        print(f"\n{result.line()}")
        return result

    def watched(self) -> list[Program]:
        return [p for p in (self.broker, self.receiver, self.agent) if p is not None and p.running]


@pytest.fixture
def rig_factory(
    request: pytest.FixtureRequest, tmp_path: Path, database_schema: str, catalog_policy_off: Path
) -> Iterator[object]:
    rigs: list[Rig] = []
    if shutil.which("mosquitto") is None:
        service_unavailable("mosquitto binary not installed")

    def make(
        *,
        persistence: bool = True,
        proxy: bool = False,
        session_expiry_s: int = 3600,
        web_port: int | None = None,
        buffer_dir: Path | None = None,
        agent_metrics: bool = False,
        start_receiver: bool = True,
    ) -> Rig:
        broker = Mosquitto(tmp_path / "broker", persistence=persistence)
        broker.start()
        pg = urlsplit(PG_DSN)
        pg_proxy = PgProxy(pg.hostname or "127.0.0.1", pg.port or 5432) if proxy else None
        dsn = PG_DSN.replace(f":{pg.port or 5432}/", f":{pg_proxy.port}/") if pg_proxy else PG_DSN
        receiver = Receiver(
            tmp_path / "receiver",
            ReceiverConfig(
                broker_port=broker.port,
                db_dsn=dsn,
                schema=database_schema,
                client_id=unique_id("rx-"),
                session_expiry_s=session_expiry_s,
                web_port=web_port,
            ),
            migrate_dsn=PG_DSN,
        )
        vehicle = "bus-" + unique_id("")[:8]
        buffer_path = (buffer_dir or tmp_path / "state") / "buffer.sqlite3"
        prepare_audited_buffer(buffer_path)
        rig = Rig(
            directory=tmp_path,
            scenario=request.node.name,
            broker=broker,
            receiver=receiver,
            db=Database(PG_DSN, database_schema, vehicle),
            buffer_path=buffer_path,
            agent_config=AgentConfig(
                vehicle_id=vehicle,
                fleet=unique_id("f"),
                broker_port=broker.port,
                buffer_path=buffer_path,
                catalog=catalog_policy_off,
                metrics_port=free_port() if agent_metrics else 0,
            ),
            proxy=pg_proxy,
            programs=[broker, receiver],
        )
        if start_receiver:
            receiver.start_subscribed()
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for program in reversed(rig.programs):
            program.ensure_dead()
        if rig.proxy is not None:
            rig.proxy.close()


@pytest.fixture
def live_bus_factory() -> Iterator[object]:
    buses: list[LiveBus] = []

    def make(duration_s: float, *, seed: int = 7) -> LiveBus:
        bus = start_tapped_live_bus(duration_s, seed=seed)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.stop()

"""The uplink over TLS with a client certificate, against a real Mosquitto TLS listener that requires one.

The certificates are made for each test run with the `openssl` command (a test CA, a broker certificate for
127.0.0.1, a bus certificate, and a certificate from a CA the broker does not trust). The broker is a private
`mosquitto -c conf` on a free loopback port, as ENVIRONMENT.md suggests for TLS tests.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.buffer import BufferWorker
from agent.uplink import Uplink
from tests.integration.conftest import service_unavailable, unique_id
from tests.integration.test_uplink import (
    QUANTA,
    WAIT_S,
    PrivateBroker,
    _connected,
    _rows,
    _samples,
    _settings,
    _stop,
    collecting,
)


@dataclass(frozen=True)
class Pki:
    ca: Path
    broker_cert: Path
    broker_key: Path
    bus_cert: Path
    bus_key: Path
    stranger_cert: Path  # signed by a CA the broker does not know
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(cwd: Path, name: str, subject: str, ca: str, extensions: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
             cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        service_unavailable("the openssl command is not installed")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "stranger-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=voltgate test {ca}", cwd=d)  # fmt: skip
    _issue(d, "broker", "/CN=127.0.0.1", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _issue(d, "bus", "/CN=bus-9", "ca", "extendedKeyUsage=clientAuth\n")
    _issue(d, "stranger", "/CN=bus-666", "stranger-ca", "extendedKeyUsage=clientAuth\n")
    return Pki(
        d / "ca.crt", d / "broker.crt", d / "broker.key", d / "bus.crt", d / "bus.key",
        d / "stranger.crt", d / "stranger.key",
    )  # fmt: skip


class TlsBroker(PrivateBroker):
    """A private mosquitto whose only listener is TLS and requires a client certificate from the test CA."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        super().__init__(directory)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\nlog_dest none\n"
            f"cafile {pki.ca}\ncertfile {pki.broker_cert}\nkeyfile {pki.broker_key}\n"
            "require_certificate true\n"
        )

    def stop(self) -> None:  # no persistence here: nothing to check
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[TlsBroker]:
    if shutil.which("mosquitto") is None:
        service_unavailable("mosquitto binary not installed")
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = TlsBroker(directory, pki)
    broker.start()
    yield broker
    broker.stop()


def _bus_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.bus_cert), str(pki.bus_key))
    return context


async def test_uplink_over_tls_with_a_client_certificate(
    tls_broker: TlsBroker, pki: Pki, buffer: BufferWorker
) -> None:
    fleet = unique_id("f")
    settings = _settings(
        "127.0.0.1", tls_broker.port, fleet, broker_url=f"mqtts://127.0.0.1:{tls_broker.port}",
        ca_file=pki.ca, cert_file=pki.bus_cert, key_file=pki.bus_key,
    )  # fmt: skip
    async with collecting("127.0.0.1", tls_broker.port, fleet, tls_context=_bus_tls(pki)) as collector:
        uplink = Uplink(settings, "bus-9", buffer, QUANTA)
        task = asyncio.create_task(uplink.run())
        await _connected(uplink)
        await buffer.commit_samples(_samples(0, 120))
        uplink.notify()
        await collector.wait_for(
            "120 samples over TLS", lambda: set(collector.sample_seqs()) == set(range(120))
        )
        await _stop(uplink, task)
    assert await _rows(buffer) == 0


@pytest.mark.parametrize("who", ["no client certificate", "a certificate from an unknown CA"])
async def test_a_broker_that_refuses_the_client_keeps_the_rows(
    tls_broker: TlsBroker, pki: Pki, buffer: BufferWorker, caplog: pytest.LogCaptureFixture, who: str
) -> None:
    fleet = unique_id("f")
    credentials = {} if who == "no client certificate" else {"cert_file": pki.stranger_cert,
                                                             "key_file": pki.stranger_key}  # fmt: skip
    settings = _settings(
        "127.0.0.1", tls_broker.port, fleet, broker_url=f"mqtts://127.0.0.1:{tls_broker.port}",
        ca_file=pki.ca, **credentials,
    )  # fmt: skip
    await buffer.commit_samples(_samples(0, 30))
    uplink = Uplink(settings, "bus-9", buffer, QUANTA)
    with caplog.at_level(logging.WARNING, logger="agent.uplink"):
        task = asyncio.create_task(uplink.run())
        # WHEN the broker refuses the TLS handshake, THEN the link failure is logged once ...
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while not any("failed" in r.getMessage() for r in caplog.records):
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"the uplink never reported the refused connection ({who})", pytrace=False)
            await asyncio.sleep(0.05)
        assert not uplink.connected
        await _stop(uplink, task, flush_s=1.0)
    # ... and every committed row is still in the buffer, for when the credentials are fixed
    assert await _rows(buffer) == 30

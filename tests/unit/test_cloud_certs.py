"""The fleet's certificates (`cloud.certs`, `voltgate-cloud certs`): names, extensions, validity, files."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given
from hypothesis import strategies as st

from cloud.__main__ import EXIT_USAGE, main
from cloud.certs import (
    CertError,
    FleetPki,
    bus_identity,
    cert_alt_names,
    common_name,
    receiver_identity,
    subject_alt_names,
)
from protocols.topics import ID_PATTERN, telemetry_topic

_IDS = st.from_regex(ID_PATTERN, fullmatch=True)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> FleetPki:
    pki = FleetPki(tmp_path / "pki")
    pki.init_ca()
    return pki


@given(_IDS, _IDS)
def test_a_bus_identity_is_its_own_two_topic_levels(fleet: str, vehicle: str) -> None:
    # The broker ACL substitutes the CN for %u in voltgate/v1/%u/telemetry: exactly the bus's topic.
    if len(fleet) + len(vehicle) + 1 > 64:
        with pytest.raises(CertError, match="63"):
            bus_identity(fleet, vehicle)
    else:
        assert f"voltgate/v1/{bus_identity(fleet, vehicle)}/telemetry" == telemetry_topic(fleet, vehicle)


@pytest.mark.parametrize(("fleet", "vehicle"), [("a/b", "bus-1"), ("f", "+"), ("f", "#"), ("", "bus-1")])
def test_a_bus_identity_never_holds_a_separator_or_wildcard_of_its_own(fleet: str, vehicle: str) -> None:
    with pytest.raises(CertError, match="invalid"):
        bus_identity(fleet, vehicle)


@pytest.mark.parametrize("name", ["depot/cloud", "cloud+", "#", ""])
def test_a_receiver_name_can_never_be_a_bus_identity(name: str) -> None:
    with pytest.raises(CertError):
        receiver_identity(name)


def test_the_ca_signs_end_certificates_only(pki: FleetPki) -> None:
    ca = _load(pki.ca_cert_path)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.not_valid_after_utc - datetime.now(UTC) > timedelta(days=3600)


def test_a_bus_certificate_names_the_bus_and_authenticates_a_client(pki: FleetPki) -> None:
    issued = pki.issue_bus("depot-3", "bus-0042")
    cert = _load(issued.cert_path)
    assert issued.cert_path == pki.directory / "buses" / "depot-3" / "bus-0042.crt"
    assert common_name(cert) == issued.common_name == "depot-3/bus-0042"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(extended) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(_load(pki.ca_cert_path))
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - now > timedelta(days=1800)


def test_the_broker_certificate_covers_every_host_name_and_address(pki: FleetPki) -> None:
    issued = pki.issue_broker(["mqtt.example.org", "10.0.0.5", "::1", "MQTT.example.org"], valid_days=30)
    cert = _load(issued.cert_path)
    assert common_name(cert) == "mqtt.example.org"
    assert cert_alt_names(cert) == [
        x509.DNSName("mqtt.example.org"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(extended) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - datetime.now(UTC) < timedelta(days=31)


@pytest.mark.parametrize("hosts", [[], ["bad host"], ["mqtt.example.org/x"]])
def test_a_bad_broker_host_is_refused(hosts: list[str]) -> None:
    with pytest.raises(CertError):
        subject_alt_names(hosts)


def test_an_end_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    pki = FleetPki(tmp_path)
    pki.init_ca(valid_days=10)
    cert = _load(pki.issue_receiver(valid_days=1000).cert_path)
    assert cert.not_valid_after_utc == _load(pki.ca_cert_path).not_valid_after_utc


def test_keys_are_private_and_python_ssl_loads_the_pairs(pki: FleetPki) -> None:
    issued = [pki.issue_bus("f", "bus-1"), pki.issue_receiver(), pki.issue_broker(["127.0.0.1"])]
    for item in issued:
        assert stat.S_IMODE(item.key_path.stat().st_mode) == 0o600
        ssl.create_default_context().load_cert_chain(str(item.cert_path), str(item.key_path))
    assert stat.S_IMODE(pki.ca_key_path.stat().st_mode) == 0o600
    for folder in (pki.directory, pki.directory / "buses", pki.directory / "buses" / "f"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_running_again_keeps_a_matching_certificate(pki: FleetPki) -> None:
    first = pki.issue_bus("f", "bus-1")
    before = first.cert_path.read_bytes(), first.key_path.read_bytes()
    again = pki.issue_bus("f", "bus-1")
    assert first.created and not again.created
    assert (again.cert_path.read_bytes(), again.key_path.read_bytes()) == before
    assert not pki.init_ca().created


def test_a_different_certificate_in_the_way_is_replaced_only_when_forced(pki: FleetPki) -> None:
    pki.issue_broker(["mqtt.example.org"])
    with pytest.raises(CertError, match="host names differ; pass --force"):
        pki.issue_broker(["mqtt.example.org", "10.0.0.5"])
    replaced = pki.issue_broker(["mqtt.example.org", "10.0.0.5"], force=True)
    assert replaced.created
    assert len(cert_alt_names(_load(replaced.cert_path))) == 2


def test_a_certificate_from_a_replaced_ca_is_not_kept(pki: FleetPki) -> None:
    pki.issue_bus("f", "bus-1")
    pki.init_ca(force=True)
    with pytest.raises(CertError, match="not signed by this CA"):
        pki.issue_bus("f", "bus-1")


def test_a_lone_key_is_not_overwritten(pki: FleetPki) -> None:
    _, key_path = pki.bus_paths("f", "bus-1")
    key_path.parent.mkdir(parents=True)
    key_path.write_text("precious")
    with pytest.raises(CertError, match="without its pair"):
        pki.issue_bus("f", "bus-1")
    assert key_path.read_text() == "precious"


def test_no_end_certificate_without_a_ca(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="no CA"):
        FleetPki(tmp_path).issue_bus("f", "bus-1")


def test_the_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(tmp_path / "pki")
    assert main(["certs", "ca", "--dir", folder]) == 0
    assert main(["certs", "bus", "--dir", folder, "--fleet", "depot-3", "--vehicle", "bus-1",
                 "--vehicle", "bus-2"]) == 0  # fmt: skip
    assert main(["certs", "bus", "--dir", folder, "--fleet", "depot-3", "--vehicle", "bus-1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["made", "made", "made", "kept"]
    assert "CN depot-3/bus-2" in out[2]
    assert main(["certs", "bus", "--dir", folder, "--fleet", "depot/3", "--vehicle", "bus-1"]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert error.startswith("voltgate-cloud: invalid fleet id") and error.count("\n") == 1

"""The fleet's certificates: one CA, the broker's server certificate, a client certificate per bus and
per receiver.

Identity scheme (the broker side is `deploy/mosquitto/`). Mosquitto takes the client certificate's common
name as the MQTT username (`use_identity_as_username`), and its ACL `pattern` lines substitute that username
for `%u` in a topic. A bus's CN is therefore `{fleet}/{vehicle}`, exactly the two topic levels it may publish
under (`voltgate/v1/%u/telemetry`) and read its downlink from (`voltgate/v1/%u/downlink/#`): a bus of fleet A
cannot publish under fleet B, nor under another bus, because the CA never signed that name for it. A
receiver's CN is a plain name without '/' (`voltgate-cloud`), so it can never be a bus's two levels; the ACL
grants it by name. Mosquitto 2.0 substitutes a '/' in `%u` as is (tests/integration/test_fleet_isolation.py)
and refuses any access to a username holding '+' or '#'; ids here follow `protocols.topics.ID_PATTERN`, which
has neither. X.509 caps a CN at 64 characters, so fleet and vehicle ids together may have at most 63.

Keys are ECDSA P-256: what every TLS stack on a gateway or a broker (Mosquitto's OpenSSL, EMQX, HiveMQ,
Python's ssl) accepts. Private keys are written 0600, never replaced unless asked (`force`): re-running a
command for a certificate that exists and still matches what is asked (same name, same host names, signed by
this CA, not expired) keeps it and says so, so a provisioning script may run it again and again.

The certificate builders are pure (a key, a name, a time → a certificate); `FleetPki` is the thin shell that
reads and writes the directory:

    ca.crt  ca.key                          the fleet CA (keep ca.key offline once the fleet is issued)
    broker.crt  broker.key                  the broker's server certificate (SANs: its host names and IPs)
    receivers/{name}.crt  .key              a receiver's client certificate (CN {name})
    buses/{fleet}/{vehicle}.crt  .key       a bus's client certificate (CN {fleet}/{vehicle})
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.errors import CloudError
from protocols.topics import ID_MAX_LEN, is_valid_id

CN_MAX_CHARS = 64  # X.509 upper bound (ub-common-name)
CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825
CLIENT_VALID_DAYS = 1825  # a bus is re-keyed in the depot, not over the air: longer than a server's
BACKDATE = timedelta(days=1)  # a gateway whose clock is a little behind still accepts a fresh certificate
RECEIVER_NAME = "voltgate-cloud"
CA_NAME = "voltgate fleet CA"


class CertError(CloudError):
    """A certificate cannot be made: a bad name, a missing CA, or files in the way."""


class Usage(Enum):
    SERVER = ExtendedKeyUsageOID.SERVER_AUTH
    CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


# --- names -------------------------------------------------------------------------------------------------


def bus_identity(fleet: str, vehicle: str) -> str:
    """The CN (and so the broker username) of a bus: `{fleet}/{vehicle}`, its own two topic levels."""
    for what, value in (("fleet", fleet), ("vehicle", vehicle)):
        if not is_valid_id(value):
            raise CertError(f"invalid {what} id {value!r}: expected 1-{ID_MAX_LEN} of A-Z a-z 0-9 _ . -")
    identity = f"{fleet}/{vehicle}"
    if len(identity) > CN_MAX_CHARS:
        raise CertError(
            f"fleet and vehicle ids together are {len(identity) - 1} characters; a certificate name holds"
            f" {CN_MAX_CHARS - 1} (plus the '/')"
        )
    return identity


def receiver_identity(name: str) -> str:
    """The CN of a receiver: one topic-safe name with no '/', so it can never be a bus's identity."""
    if not is_valid_id(name):
        raise CertError(f"invalid receiver name {name!r}: expected 1-{ID_MAX_LEN} of A-Z a-z 0-9 _ . -")
    return name


def subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses a server certificate is valid for, in the order given, without repeats."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            if not host or any(c.isspace() or c in "/:@*" for c in host):
                raise CertError(f"{host!r} is neither an IP address nor a DNS name") from None
            name = x509.DNSName(host.lower())
        if name not in names:
            names.append(name)
    if not names:
        raise CertError("a server certificate needs at least one host name or IP address")
    return names


# --- pure builders -----------------------------------------------------------------------------------------


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """ECDSA keys sign (TLS handshakes); only the CA's also signs certificates and revocation lists."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def ca_certificate(
    key: ec.EllipticCurvePrivateKey, common_name: str, now: datetime, valid_days: int
) -> x509.Certificate:
    """A self-signed CA that signs end certificates only (path length 0)."""
    name = _name(common_name)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def end_certificate(
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    usage: Usage,
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    valid_days: int,
    alt_names: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """A server or client certificate signed by the CA; never valid beyond the CA itself."""
    not_after = min(now + timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage.value]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def common_name(cert: x509.Certificate) -> str:
    [attribute] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attribute.value
    return value if isinstance(value, str) else value.decode()


def cert_alt_names(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def mismatch(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    name: str,
    ca_cert: x509.Certificate | None,
    now: datetime,
    alt_names: Sequence[x509.GeneralName] = (),
) -> str | None:
    """Why an existing certificate is not the one asked for (None: it is, keep it)."""
    if cert.public_key() != key.public_key():
        return "its key file does not belong to it"
    if common_name(cert) != name:
        return f"it is for {common_name(cert)!r}"
    if cert.not_valid_after_utc <= now:
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if ca_cert is not None:
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return "it was not signed by this CA"
    if sorted(map(str, cert_alt_names(cert))) != sorted(map(str, alt_names)):
        return "its host names differ"
    return None


# --- files -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """One certificate on disk and whether this call made it (False: an existing matching one was kept)."""

    cert_path: Path
    key_path: Path
    common_name: str
    not_after: datetime
    created: bool


def _make_private_folders(folder: Path) -> None:
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):  # each new level 0700, not only the last (mkdir(parents=True) does that)
        each.mkdir(mode=0o700, exist_ok=True)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    _make_private_folders(path.parent)
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # the key is never readable by others
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(path)


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise CertError(f"cannot read the private key {path}: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{path} is not an EC private key")
    return key


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as err:
        raise CertError(f"cannot read the certificate {path}: {err}") from err


class FleetPki:
    """The fleet's certificate directory (layout in the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_cert_path = directory / "ca.crt"
        self.ca_key_path = directory / "ca.key"

    def broker_paths(self) -> tuple[Path, Path]:
        return self.directory / "broker.crt", self.directory / "broker.key"

    def receiver_paths(self, name: str) -> tuple[Path, Path]:
        name = receiver_identity(name)
        return self.directory / "receivers" / f"{name}.crt", self.directory / "receivers" / f"{name}.key"

    def bus_paths(self, fleet: str, vehicle: str) -> tuple[Path, Path]:
        bus_identity(fleet, vehicle)
        folder = self.directory / "buses" / fleet
        return folder / f"{vehicle}.crt", folder / f"{vehicle}.key"

    def init_ca(self, name: str = CA_NAME, *, valid_days: int = CA_VALID_DAYS, force: bool = False) -> Issued:
        """Make the fleet CA, or keep the one there. Replacing it (`force`) orphans all it signed."""
        if not name.strip() or len(name) > CN_MAX_CHARS:
            raise CertError(f"the CA name must be 1-{CN_MAX_CHARS} characters")
        now = datetime.now(UTC)

        def make(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
            return ca_certificate(key, name, now, valid_days)

        return self._issue(self.ca_cert_path, self.ca_key_path, name, make, None, (), now, force)

    def issue_broker(
        self, hosts: Sequence[str], *, valid_days: int = SERVER_VALID_DAYS, force: bool = False
    ) -> Issued:
        """The broker's server certificate: the hosts are its SANs (what clients check), the first its CN."""
        alt_names = subject_alt_names(hosts)
        name = hosts[0] if len(hosts[0]) <= CN_MAX_CHARS else "voltgate broker"
        cert_path, key_path = self.broker_paths()
        return self._issue_end(cert_path, key_path, name, Usage.SERVER, valid_days, force, alt_names)

    def issue_receiver(
        self, name: str = RECEIVER_NAME, *, valid_days: int = CLIENT_VALID_DAYS, force: bool = False
    ) -> Issued:
        cert_path, key_path = self.receiver_paths(name)
        return self._issue_end(cert_path, key_path, receiver_identity(name), Usage.CLIENT, valid_days, force)

    def issue_bus(
        self, fleet: str, vehicle: str, *, valid_days: int = CLIENT_VALID_DAYS, force: bool = False
    ) -> Issued:
        cert_path, key_path = self.bus_paths(fleet, vehicle)
        identity = bus_identity(fleet, vehicle)
        return self._issue_end(cert_path, key_path, identity, Usage.CLIENT, valid_days, force)

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not (self.ca_cert_path.is_file() and self.ca_key_path.is_file()):
            raise CertError(f"no CA in {self.directory}: make it first (voltgate-cloud certs ca --dir ...)")
        return _read_cert(self.ca_cert_path), _read_key(self.ca_key_path)

    def _issue_end(
        self,
        cert_path: Path,
        key_path: Path,
        name: str,
        usage: Usage,
        valid_days: int,
        force: bool,
        alt_names: Sequence[x509.GeneralName] = (),
    ) -> Issued:
        ca_cert, ca_key = self._ca()
        now = datetime.now(UTC)

        def make(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
            return end_certificate(
                key.public_key(), name, usage, ca_cert=ca_cert, ca_key=ca_key, now=now,
                valid_days=valid_days, alt_names=alt_names,
            )  # fmt: skip

        return self._issue(cert_path, key_path, name, make, ca_cert, alt_names, now, force)

    def _issue(
        self,
        cert_path: Path,
        key_path: Path,
        name: str,
        make: Callable[[ec.EllipticCurvePrivateKey], x509.Certificate],
        ca_cert: x509.Certificate | None,
        alt_names: Sequence[x509.GeneralName],
        now: datetime,
        force: bool,
    ) -> Issued:
        cert_exists, key_exists = cert_path.exists(), key_path.exists()
        if (cert_exists or key_exists) and not force:
            if not (cert_exists and key_exists):
                there = cert_path if cert_exists else key_path
                raise CertError(f"{there} exists without its pair; pass --force to make both again")
            cert = _read_cert(cert_path)
            why = mismatch(
                cert, _read_key(key_path), name=name, ca_cert=ca_cert, now=now, alt_names=alt_names
            )
            if why is not None:
                raise CertError(f"{cert_path} exists but {why}; pass --force to replace it")
            return Issued(cert_path, key_path, name, cert.not_valid_after_utc, created=False)
        key = new_private_key()
        cert = make(key)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomically(key_path, key_pem, 0o600)
        _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return Issued(cert_path, key_path, name, cert.not_valid_after_utc, created=True)

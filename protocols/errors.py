"""The error tree of `protocols/`: one base, one branch per format.

Every error a caller can act on is a `ProtocolError`; third-party exceptions (cantools, msgpack,
zstandard, tomllib) are translated at the edge with `raise ... from err`.
"""


class ProtocolError(Exception):
    """Base of every error raised by `protocols/`."""


class DbcError(ProtocolError):
    """A CAN database that cannot be loaded or does not say what we need."""


class CatalogError(ProtocolError):
    """A signal catalog that is malformed or points at signals the DBC does not have."""


class NmeaError(ProtocolError):
    """A sentence that is not valid NMEA 0183 (framing, checksum, fields).

    `kind` says why, so a reader can count skips per kind: "framing" (not a `$` sentence, or
    non-printable characters), "truncated" (no `*hh` checksum: the line was cut short),
    "checksum", "proprietary" (`$P...`), "unsupported" (a type not parsed here), or "field" (a
    checksummed sentence with too few fields, or fields that are malformed or out of range).
    """

    def __init__(self, message: str, kind: str = "field") -> None:
        super().__init__(message)
        self.kind = kind


class WireError(ProtocolError):
    """An uplink payload that is malformed, of an unknown version, or out of bounds."""


class TopicError(ProtocolError):
    """An MQTT topic that does not follow the voltgate topic scheme."""

"""Receiver settings: a TOML file plus `VOLTGATE_CLOUD_`-prefixed environment variables.

Environment variables override the file; nested fields use `__`, e.g.
`VOLTGATE_CLOUD_DATABASE__DSN=postgresql://db/voltgate`. Each stage receives only its own
sub-model (`MqttSettings` for the broker adapter, `DatabaseSettings` for the store, ...).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cloud.errors import ConfigError
from protocols.topics import is_valid_id

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MQTT_MAX_SESSION_EXPIRY_S = 0xFFFFFFFE  # 0xFFFFFFFF means "never expires": not allowed here
_MIN_TOKEN_CHARS = 16
# RFC 6750's b64token: what a bearer token may hold and still be sent as is in an HTTP header.
# scheme://host[:port]/path with {z}, {x}, {y} in the path; {s} may stand in the host.
_TILE_URL = re.compile(
    r"https?://(\{s\}\.)?[A-Za-z0-9.-]+(:\d{1,5})?/(?=[^\s\"']*\{z\})(?=[^\s\"']*\{x\})(?=[^\s\"']*\{y\})[^\s\"';]*"
)
_BEARER_TOKEN = re.compile(rf"[A-Za-z0-9\-._~+/]{{{_MIN_TOKEN_CHARS},}}=*")


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only ('' and 0.0.0.0 are every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None  # None with tls = the system trust store
    # This receiver's client certificate and key (PEM), e.g. from `voltgate-cloud certs receiver`: what a
    # broker with require_certificate (deploy/mosquitto/) knows the receiver by. Both or neither; tls only.
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    # Stable per replica (e.g. "voltgate-cloud-<hostname>"): the broker keeps this replica's
    # session, with its unacknowledged messages, across restarts.
    client_id: str = Field(default="voltgate-cloud-1", min_length=1, max_length=128)
    shared_group: str = "voltgate-cloud"
    # Finite on purpose: a replica that never comes back must not pin messages in the broker forever.
    session_expiry_s: int = Field(default=3600, ge=1, le=_MQTT_MAX_SESSION_EXPIRY_S)
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    # How many unacknowledged QoS 1 messages the broker may send us (MQTT 5 Receive Maximum).
    # Messages are acknowledged after the commit, so this bounds the receiver's inbox too.
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @field_validator("shared_group")
    @classmethod
    def _group_is_topic_id(cls, value: str) -> str:
        if not is_valid_id(value):
            raise ValueError("must be 1-64 of A-Z a-z 0-9 _ . - (it becomes a topic level)")
        return value

    @model_validator(mode="after")
    def _client_certificate_pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.cert_file and mqtt.key_file go together (a client certificate, its key)")
        if self.cert_file is not None and not self.tls:
            raise ValueError("mqtt.cert_file needs mqtt.tls = true (a client certificate goes over TLS)")
        return self


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)

    dsn: SecretStr = SecretStr("postgresql://127.0.0.1:5432/voltgate")
    schema_name: str = Field(default="voltgate", alias="schema")
    connect_timeout_s: int = Field(default=5, ge=1)
    # Raw samples and ledger rows older than this are dropped (partitions / retention policy).
    raw_retention_days: int = Field(default=90, ge=7)
    # Daily partitions the receiver keeps created ahead of today (native PostgreSQL path).
    partitions_ahead_days: int = Field(default=2, ge=1, le=30)
    # The hour and day rollup tables take in the minute aggregates logged by the writes this often
    # (both flavours; reads of samples_1h / samples_1d add the log, so they are current at every
    # commit). Longer: less work per sample, a longer log for each hour or day read to scan.
    rollup_refresh_s: float = Field(default=300.0, ge=1.0, le=3600.0)
    # Each refresh then keeps ended bus-days (daily KPIs, trips, charging sessions) for about this
    # long at most, one bus-day (~3 queries) per transaction; the rest wait for the next refresh.
    # 120 of every 300 s: after midnight a whole fleet's days are due at once (0.14 s a bus-day
    # measured at 14,000 samples a bus-day, more at full rate: size it with the fleet).
    kpi_keep_budget_s: float = Field(default=120.0, gt=0, le=3600.0)
    # Dead letters (messages and refused records not stored as data) are bounded three ways: a payload
    # is stored cut to its first bytes (its original length and SHA-256 kept); the hourly maintenance
    # (and the writer, after each tenth of the total it wrote) deletes rows older than the retention,
    # then the oldest rows while all of them together (payloads, reasons, listed records) exceed the total.
    dead_letter_payload_max_bytes: int = Field(default=8192, ge=0, le=1_048_576)  # 2 minutes of telemetry
    dead_letter_retention_days: int = Field(default=30, ge=1)
    dead_letter_max_total_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    # A message's refused records are one dead letter listing at most this many of them (and counting
    # all): a bus with a broken clock may send 250,000 of them in one message.
    dead_letter_max_listed_records: int = Field(default=100, ge=0, le=10_000)

    @field_validator("schema_name")
    @classmethod
    def _schema_is_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("must be a lower-case SQL identifier (letters, digits, underscore)")
        return value


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # One database transaction holds at most this many messages; a group that is not full is cut
    # once its oldest message has waited batch_max_age_s since it arrived (cloud/mqtt.py, Inbox).
    batch_max_messages: int = Field(default=500, ge=1, le=65535)
    batch_max_age_s: float = Field(default=0.2, gt=0, le=60)
    max_payload_bytes: int = Field(default=1_048_576, ge=64)
    # Plausibility window for source timestamps, around the time of receipt; each record outside it
    # is refused on its own (a dead letter), the rest of its message is stored. The window must cover
    # what the agent's buffer can hold: its default cap (512 MiB, ~96 B a sample with its index,
    # measured) holds ~5.6 million samples, which a bus in service (~10 samples/s, 16 h a day) fills in
    # ~10 days and a parked bus sending only heartbeats (the catalog's signals at their max_interval_s,
    # ~0.9 samples/s) in ~70 days; 400 days covers ~5 times that, or a gateway powered a few hours a
    # day. Samples older than database.raw_retention_days are stored all the same (their rollups and
    # daily KPIs stay), then dropped with their day by the retention.
    max_sample_age_days: int = Field(default=400, ge=1, le=36_500)
    max_future_skew_s: int = Field(default=600, ge=0)


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)  # 0 = no metrics endpoint


_LOCAL_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


class BusOperations(BaseModel):
    """What the operator says about one bus (or, as `OperationsSettings`' fields, every bus by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_km: float | None = Field(default=None, gt=0, le=2000)  # the block's scheduled kilometres
    block_start: str | None = None  # local "HH:MM" (web.time_zone) the block leaves the depot
    block_end: str | None = None  # local "HH:MM" it is due back
    usable_energy_kwh: float | None = Field(default=None, gt=0, le=5000)  # else the status's capacity
    nominal_capacity_ah: float | None = Field(default=None, gt=0, le=100_000)  # new pack: for SOH %

    @field_validator("block_start", "block_end")
    @classmethod
    def _local_time(cls, value: str | None) -> str | None:
        if value is not None and not _LOCAL_TIME.fullmatch(value):
            raise ValueError("must be a local time HH:MM, e.g. '05:30'")
        return value

    @model_validator(mode="after")
    def _start_and_end_together(self) -> Self:
        if (self.block_start is None) != (self.block_end is None):
            raise ValueError("block_start and block_end go together (the block's hours)")
        return self


class OperationsSettings(BusOperations):
    """[web.operations]: fleet defaults, `buses` overrides per bus; read by block risk and battery health."""

    reserve_soc_pct: float = Field(default=15.0, ge=0, lt=100)  # never plan to run below this SOC
    lookback_days: int = Field(default=14, ge=1, le=90)  # recent days for kWh/km and typical distance
    buses: dict[str, BusOperations] = Field(default_factory=dict)

    @field_validator("buses")
    @classmethod
    def _bus_ids(cls, value: dict[str, BusOperations]) -> dict[str, BusOperations]:
        for bus in value:
            if not is_valid_id(bus):
                raise ValueError(f"bus id {bus!r} is malformed: expected 1-64 of A-Z a-z 0-9 _ . -")
        return value

    def for_bus(self, vehicle_id: str) -> BusOperations:
        """The bus's own settings, each unset field taken from the fleet default."""
        own = self.buses.get(vehicle_id)
        fleet = BusOperations.model_validate(self.model_dump(include=set(BusOperations.model_fields)))
        if own is None:
            return fleet
        return fleet.model_copy(update=own.model_dump(exclude_unset=True))


class WebSettings(BaseModel):
    """The fleet views (JSON API, web page, /metrics): `serve` always serves them; `run` serves them
    too when the configuration has a [web] section (or a VOLTGATE_CLOUD_WEB__* variable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0 = any free port (tests)
    time_zone: str = "UTC"  # the fleet's local time: the default for daily KPIs
    max_range_days: int = Field(default=400, ge=1, le=3660)
    db_pool_size: int = Field(default=4, ge=1, le=64)
    statement_timeout_s: float = Field(default=15.0, gt=0, le=600)
    # A stop at least this long ends a trip (a layover); shorter ones (bus stops, lights) stay inside.
    trip_gap_s: float = Field(default=300.0, ge=10, le=86400)
    # Bearer tokens, any of which opens /api/* (but /api/health) to a request sending it in
    # `Authorization: Bearer <token>`. Empty: the API is open to anyone who can reach it, which is
    # refused on a non-loopback host unless `open_without_tokens` says it is meant.
    api_tokens: tuple[SecretStr, ...] = ()
    # True: serve /api without tokens on a non-loopback host, on purpose (e.g. behind a proxy that
    # authenticates). The fleet's positions and data are then open to whoever reaches host:port.
    open_without_tokens: bool = False
    # The fleet map's background: a slippy-map tile URL template ({z}/{x}/{y}, optionally {s} for
    # a subdomain), e.g. "https://tile.openstreetmap.org/{z}/{x}/{y}.png". None (the default): no
    # tiles, the page needs no internet; the buses and the selected bus's route show on a blank map.
    map_tile_url: str | None = None
    map_attribution: str = Field(default="", max_length=300)  # shown on the map, as the tile server asks
    map_subdomains: str = Field(default="abc", pattern=r"^[a-z0-9]{1,10}$")  # what {s} takes
    # What block risk and battery health need to know about the buses ([web.operations]).
    operations: OperationsSettings = OperationsSettings()

    @field_validator("map_tile_url")
    @classmethod
    def _tile_template(cls, value: str | None) -> str | None:
        if value is not None and not _TILE_URL.fullmatch(value):
            raise ValueError(
                "must be an http(s) tile URL template with {z}, {x} and {y},"
                " e.g. 'https://tile.openstreetmap.org/{z}/{x}/{y}.png'"
            )
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone name, e.g. 'Africa/Nairobi'") from None
        return value

    @field_validator("api_tokens")
    @classmethod
    def _tokens_are_long_and_plain(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        # The message never quotes a token: it is a secret.
        for token in value:
            if not _BEARER_TOKEN.fullmatch(token.get_secret_value()):
                raise ValueError(
                    f"each token must be at least {_MIN_TOKEN_CHARS} of A-Z a-z 0-9 - . _ ~ + /"
                    " (then any '='), e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return value

    @model_validator(mode="after")
    def _not_open_to_the_network_by_accident(self) -> Self:
        if not self.api_tokens and not self.open_without_tokens and not is_loopback(self.host):
            raise ValueError(
                f"web.host {self.host!r} serves the fleet's data to the network but web.api_tokens is empty:"
                " set api_tokens, bind a loopback host, or set web.open_without_tokens = true if it is meant"
            )
        return self


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = False  # one JSON object per line, for journald / log shippers


class FleetControlSettings(BaseModel):
    """The receiver's fleet-control task (cloud/fleet_control.py): downlink of desired state, rollouts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # How often it looks for changes `voltgate-cloud fleet` made (a bus's report wakes it at once).
    poll_s: float = Field(default=5.0, ge=0.05, le=3600.0)
    # The broker's largest packet (deploy/mosquitto/voltgate.conf: max_packet_size 6291456): `fleet model
    # push` refuses a release that would not fit, and the task does not publish one (a broker disconnects a
    # client that sends a larger packet).
    max_packet_bytes: int = Field(default=6_291_456, ge=64 * 1024, le=268_435_455)


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOLTGATE_CLOUD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mqtt: MqttSettings = MqttSettings()
    database: DatabaseSettings = DatabaseSettings()
    ingest: IngestSettings = IngestSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings | None = None  # None: `run` does not serve the fleet views
    log: LogSettings = LogSettings()
    fleet_control: FleetControlSettings = FleetControlSettings()

    @model_validator(mode="after")
    def _group_fits_in_flight(self) -> Self:
        # Messages are acknowledged after commit, so the broker never has more than receive_maximum
        # of them out to us: a larger group could only ever be completed by its age limit.
        if self.ingest.batch_max_messages > self.mqtt.receive_maximum:
            raise ValueError(
                f"ingest.batch_max_messages ({self.ingest.batch_max_messages}) must not exceed "
                f"mqtt.receive_maximum ({self.mqtt.receive_maximum})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then the environment, then the TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(path: Path | None) -> CloudSettings:
    """Load and validate settings from `path` (TOML) and the environment; `ConfigError` on any problem."""
    toml_file: Path | None = None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            with path.open("rb") as f:
                tomllib.load(f)  # parse once here for a clear message; the source re-reads it
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
        toml_file = path

    class _FromFile(CloudSettings):
        model_config = SettingsConfigDict(toml_file=toml_file)

    try:
        return _FromFile()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        source = f"config file {path}" if path is not None else "the environment"
        raise ConfigError(
            f"{source}: setting {where!r} is invalid: {first['msg']} ({err.error_count()} problem(s) in all)"
        ) from err

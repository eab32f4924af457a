"""Agent configuration: pydantic-settings models, a TOML file plus VOLTGATE_… environment variables.

Each stage receives only its own sub-model. `load_settings(path)` validates everything once and turns
every problem into one sentence (`ConfigError`); checks that need the file system or other packages
(catalogs, interfaces, writable paths) are `agent.preflight.preflight`.
"""

from __future__ import annotations

import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

import models
from protocols.catalog import DEFAULT_CATALOG
from protocols.topics import ID_PATTERN

MODELS_DIR = Path(models.__file__).resolve().parent
"""The installed `models` package: where the shipped ONNX models live."""
SHIPPED_MODELS = tuple(MODELS_DIR / f"{name}.onnx" for name in ("soc_drop", "large_drop", "fault_risk"))


_ID = f"^{ID_PATTERN.pattern}$"  # vehicle and fleet ids: the topic scheme's one id rule


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanBusSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")  # e.g. "traction"; labels metrics and frames
    interface: str  # any python-can interface: socketcan, slcan, virtual, pcan, kvaser, ...
    channel: str  # "can0", "/dev/ttyACM0@115200", a virtual channel name, ...
    bitrate: int | None = 500_000
    catalog: Path = DEFAULT_CATALOG  # its DBC is named inside it
    dbc: Path | None = None  # overrides the catalog's DBC
    hardware_filters: bool = True  # pass only the catalog's ids where the interface can filter
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)  # extra python-can kwargs


class ReplaySettings(_Section):
    """A recorded log (.log candump, .asc, .blf, ...) played as a CAN source."""

    name: str = Field(default="replay", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    path: Path
    catalog: Path = DEFAULT_CATALOG
    dbc: Path | None = None
    speed: Literal["recorded", "max"] = "max"


class GpsSettings(_Section):
    enabled: bool = False
    port: str = "/dev/ttyUSB0"  # a serial device or a pty
    baudrate: int = 9600
    # NMEA 0183 requires a checksum; accept sentences without one only for a receiver that never sends it
    # (a cut-off line then passes when the cut falls inside its last field; see protocols.nmea_sentences)
    accept_missing_checksum: bool = False


class ClockSettings(_Section):
    """Timestamp plausibility per source (see `agent.clock`): implausible samples are counted, buffered as
    stamped and kept out of inference and alerts."""

    max_skew_s: float = Field(default=60.0, gt=0, le=3600.0)  # live CAN and GPS: off the monotonic anchor
    max_jump_s: float = Field(default=300.0, gt=0, le=86_400.0)  # replayed logs: off the log's running time
    step_confirm_samples: int = Field(default=5, ge=1, le=100_000)  # a step: this many consecutive stamps...
    step_confirm_s: float = Field(default=3.0, ge=0, le=600.0)  # ...agreeing over this long: re-anchor once


class BufferSettings(_Section):
    """The durable SQLite buffer (see `agent.buffer`)."""

    path: Path = Path("/var/lib/voltgate/buffer.sqlite3")
    # cap on the buffer's disk use: database file + WAL + disk reserve (see agent.buffer_space.ByteBudget)
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=256 * 1024)
    commit_interval_s: float = Field(default=0.5, gt=0, le=1.0)  # at most this much data in flight at kill -9


class UplinkSettings(_Section):
    """MQTT 5 uplink to the fleet broker (see `agent.uplink`)."""

    broker_url: str = "mqtts://127.0.0.1:8883"  # mqtt://host[:1883] or mqtts://host[:8883] (TLS)
    fleet_id: str = Field(default="default", pattern=_ID)
    client_id: str | None = None  # default: "voltgate-{fleet_id}-{vehicle_id}"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None  # None: the system trust store (mqtts only)
    cert_file: Path | None = None  # client certificate (PEM), with key_file
    key_file: Path | None = None
    tls_insecure: bool = False  # skip the broker hostname check (test benches only)
    keepalive_s: int = Field(default=60, ge=5, le=65_535)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    batch_max_records: int = Field(default=2_000, ge=1, le=100_000)
    batch_max_age_s: float = Field(default=60.0, ge=0)  # alerts bypass it; 60 s batches cost ~2.4 B/sample
    puback_timeout_s: float = Field(default=20.0, gt=0)  # "connected but stuck": recycle the connection
    ack_timeout_s: float = Field(default=60.0, gt=0)  # no commit ack from the cloud within this: re-send
    ack_timeout_max_s: float = Field(default=1_800.0, gt=0)  # re-send deadline doubles up to this
    max_inflight_records: int = Field(default=50_000, ge=1)  # sent, not yet acked; full: no new rows go
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=120.0, gt=0)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        broker_address(value)
        return value

    @model_validator(mode="after")
    def _client_cert_pair(self) -> UplinkSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate and its key)")
        return self

    @property
    def address(self) -> BrokerAddress:
        return broker_address(self.broker_url)


class BrokerAddress(NamedTuple):
    host: str
    port: int
    tls: bool


def broker_address(url: str) -> BrokerAddress:
    """`mqtt://host[:port]` or `mqtts://host[:port]` → host, port, TLS; ValueError with a readable reason."""
    example = "like mqtts://broker.example.com:8883 or mqtt://127.0.0.1:1883"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"broker URL {url!r} is not valid ({err}); expected a URL {example}") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker URL {url!r} is not an MQTT URL {example}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"broker URL {url!r} must be just scheme, host and port, {example}")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls)


class MetricsSettings(_Section):
    """Prometheus /metrics and /healthz on one small HTTP listener."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65_535)  # 0: any free port (tests)


class InferenceSettings(_Section):
    """On-device models (see `agent.inference`): features every `interval_s` of source time, one run each."""

    enabled: bool = True
    models: list[Path] = Field(default_factory=lambda: list(SHIPPED_MODELS))
    interval_s: float = Field(default=60.0, ge=1.0, le=3600.0)  # source time between predictions
    reload_check_s: float = Field(default=5.0, gt=0, le=600.0)  # model files polled (mtime, size), monotonic
    utc_offset_h: float = Field(default=0.0, ge=-12.0, le=14.0)  # the bus's local time, for `local_hour`
    pack_nominal_kwh: float = Field(default=300.0, gt=0)  # pp → kWh: × nominal × SOH / 100 / 100


class AlertSettings(_Section):
    """Driver alerts (see `agent.alerts`): thresholds raise, thresholds ± hysteresis clear, after a hold time.

    Insulation thresholds are in ohms per volt of the measured pack voltage, as UN ECE R100 (rev. 2/3,
    §5.1.3 and annex 4A) states its minimum isolation resistance: 100 Ω/V for DC circuits, 500 Ω/V where AC
    circuits are galvanically connected."""

    enabled: bool = True
    min_hold_s: float = Field(default=30.0, ge=0)  # source time an alert stays raised before it may clear
    prediction_max_age_s: float = Field(default=300.0, gt=0)  # older predictions no longer hold an alert
    led_root: Path = Path("/sys/class/leds")
    led_info: str | None = None  # LED class device names per severity; None: no LED
    led_warning: str | None = "voltgate:amber:alert"  # steady on
    led_critical: str | None = "voltgate:red:alert"  # blinking (the `timer` trigger, else software)
    blink_on_ms: int = Field(default=250, ge=10, le=10_000)
    blink_off_ms: int = Field(default=250, ge=10, le=10_000)
    soc_low_warning_pct: float = Field(default=20.0, ge=0, le=100)
    soc_low_critical_pct: float = Field(default=10.0, ge=0, le=100)
    soc_hysteresis_pp: float = Field(default=2.0, ge=0)
    soc_reserve_pct: float = Field(default=15.0, ge=0, le=100)  # SOC now − predicted 60-min drop below this
    large_drop_probability: float = Field(default=0.8, gt=0, le=1)
    fault_risk_probability: float | None = Field(default=None, gt=0, le=1)  # None: the model's own
    probability_hysteresis: float = Field(default=0.1, ge=0, lt=1)
    cell_temp_warning_c: float = 45.0  # the BMS starts derating (simulator/battery.py T_DERATE_START_C)
    cell_temp_critical_c: float = 50.0  # the BMS flags over-temperature (T_OVER_C)
    cell_temp_hysteresis_k: float = Field(default=3.0, ge=0)
    cell_imbalance_warning_mv: float = Field(default=50.0, gt=0)
    cell_imbalance_critical_mv: float = Field(default=100.0, gt=0)  # the BMS's cell_imbalance flag
    cell_imbalance_hysteresis_mv: float = Field(default=10.0, ge=0)
    cell_imbalance_max_current_a: float = Field(default=100.0, gt=0)  # judged near rest only (~0.2 C)
    cell_imbalance_soc_min_pct: float = Field(default=20.0, ge=0, le=100)  # ...and on the flat part of the
    cell_imbalance_soc_max_pct: float = Field(default=90.0, ge=0, le=100)  # LFP curve, not at its knees
    insulation_warning_ohm_per_v: float = Field(default=500.0, gt=0)  # UN ECE R100: AC-connected circuits
    insulation_critical_ohm_per_v: float = Field(default=100.0, gt=0)  # UN ECE R100: DC circuits
    insulation_hysteresis: float = Field(default=0.2, ge=0)  # clears at (1 + this) × the threshold

    @model_validator(mode="after")
    def _ordered(self) -> AlertSettings:
        if self.soc_low_critical_pct > self.soc_low_warning_pct:
            raise ValueError("soc_low_critical_pct must not be above soc_low_warning_pct")
        if self.cell_temp_critical_c < self.cell_temp_warning_c:
            raise ValueError("cell_temp_critical_c must not be below cell_temp_warning_c")
        if self.cell_imbalance_critical_mv < self.cell_imbalance_warning_mv:
            raise ValueError("cell_imbalance_critical_mv must not be below cell_imbalance_warning_mv")
        if self.insulation_critical_ohm_per_v > self.insulation_warning_ohm_per_v:
            raise ValueError("insulation_critical_ohm_per_v must not be above insulation_warning_ohm_per_v")
        return self


class FleetControlSettings(_Section):
    """Remote configuration and model updates over the downlink (see `agent.fleet_control`)."""

    enabled: bool = True  # off: desired config and model releases are ignored (not reported)
    # The fleet's Ed25519 public keys (PEM) that may sign a model; none: every model release is refused.
    public_keys: list[Path] = Field(default_factory=list, max_length=8)
    # The applied desired state and the received models; None: a "fleet" folder beside the buffer.
    state_dir: Path | None = None


_CONFIG_FILE: ContextVar[Path | None] = ContextVar("voltgate_config_file", default=None)


class AgentSettings(BaseSettings):
    """The whole agent configuration. Sources, in priority order: constructor arguments, `VOLTGATE_…`
    environment variables (`VOLTGATE_UPLINK__BROKER_URL`, `VOLTGATE_BUFFER__PATH`, …), the TOML file
    given to `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="VOLTGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    vehicle_id: str = Field(pattern=_ID)
    can: list[CanBusSettings] = Field(default_factory=list, max_length=4)
    replay: list[ReplaySettings] = Field(default_factory=list)
    gps: GpsSettings = GpsSettings()
    clock: ClockSettings = ClockSettings()
    buffer: BufferSettings = BufferSettings()
    uplink: UplinkSettings = UplinkSettings()
    metrics: MetricsSettings = MetricsSettings()
    inference: InferenceSettings = InferenceSettings()
    alerts: AlertSettings = AlertSettings()
    fleet_control: FleetControlSettings = FleetControlSettings()
    log_format: Literal["auto", "text", "json"] = "auto"  # auto: JSON lines under systemd

    @model_validator(mode="after")
    def _unique_bus_names(self) -> AgentSettings:
        names = [bus.name for bus in self.can] + [log.name for log in self.replay]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"bus names must be unique across [[can]] and [[replay]]: {duplicates}")
        if "gps" in names:  # the GPS receiver's own source name (its catalog, clock and metrics labels)
            raise ValueError('"gps" names the GPS receiver; give the bus another name')
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
        toml_file = _CONFIG_FILE.get()
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if toml_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources


class ConfigError(Exception):
    """A configuration the agent cannot run with; the message is meant for the person who wrote it."""


def load_settings(path: Path) -> AgentSettings:
    """Read and validate the configuration once: the TOML file at `path`, overridden by `VOLTGATE_…`
    environment variables. Every problem becomes one sentence in one `ConfigError`."""
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read the config file {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    token = _CONFIG_FILE.set(path)
    try:
        return AgentSettings()  # type: ignore[call-arg]  # vehicle_id comes from the file or environment
    except ValidationError as err:
        raise ConfigError(f"{path}: " + "; ".join(_explain(e) for e in err.errors())) from err
    except SettingsError as err:  # a VOLTGATE_… variable that cannot be read at all, e.g. a list not in JSON
        cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
        raise ConfigError(
            f"{path}: {err}{cause}; a list or table from the environment is written as JSON,"
            " e.g. VOLTGATE_INFERENCE__MODELS='[\"models/soc_drop.onnx\"]'"
        ) from err
    finally:
        _CONFIG_FILE.reset(token)


def _explain(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "config"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{where} is required but missing"
    if error["type"] == "extra_forbidden":
        return f"{where} is not a known setting (check its spelling and section)"
    got = error.get("input")
    quiet = isinstance(got, dict | list) or error["type"].startswith("value_error")
    shown = "" if quiet else f" (got {got!r})"
    return f"{where}: {message}{shown}"

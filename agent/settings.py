"""Agent configuration: pydantic-settings models, a TOML file plus VOLTGATE_… environment variables.

Each stage receives only its own sub-model. (Skeleton: source sub-models are fixed; the owner of the
buffer/uplink/app completes the rest.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocols.catalog import DEFAULT_CATALOG


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

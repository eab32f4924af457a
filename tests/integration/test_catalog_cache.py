"""The catalog cache (protocols.catalog_cache): a catalog read back from it decodes a recorded bus exactly as
one loaded in full, and without cantools' reading of the DBC; one byte changed in the catalog or its DBC loads
it in full again; a damaged cache file is rebuilt, with one warning, never fatal; a catalog that is refused is
refused the same with a cache.

A catalog read back from its cache has no `loaded_database` (cantools' reading of the DBC) until something
asks for it; one loaded in full keeps it. That tells a hit from a rebuild here."""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import pytest

from agent.decode import Decoder, DecodeStats
from agent.records import Frame, Sample
from protocols.catalog import DEFAULT_CATALOG, DEFAULT_DBC, Catalog, load_catalog
from protocols.catalog_cache import load_cached_catalog
from protocols.errors import CatalogError
from tests.integration.recorded_logs import recorded_frames


def _samples(catalog: Catalog, frames: Iterable[Frame]) -> tuple[list[Sample], DecodeStats]:
    decoder = Decoder(catalog, bus="test")
    return [sample for frame in frames for sample in decoder.process(frame)], decoder.stats


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> list[Frame]:
    """Ten simulated minutes of the shipped bus (`voltgate-sim record`)."""
    return recorded_frames(tmp_path_factory.mktemp("bus") / "bus.log", "--duration", "10m")


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """A copy of the shipped catalog and DBC, free to edit; the catalog's path."""
    shutil.copy(DEFAULT_DBC, tmp_path / DEFAULT_DBC.name)
    catalog = tmp_path / "catalog.toml"
    shutil.copy(DEFAULT_CATALOG, catalog)
    return catalog


def _cache_file(cache: Path) -> Path:
    (file,) = cache.iterdir()
    return file


def test_a_cache_hit_decodes_a_recorded_bus_as_a_full_load(
    recorded: list[Frame], shipped: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    built = load_cached_catalog(shipped, None, cache)
    assert built.loaded_database is not None  # loaded in full, then cached
    hit = load_cached_catalog(shipped, None, cache)
    assert hit.loaded_database is None
    assert hit.signals == built.signals and dict(hit.messages) == dict(built.messages)
    cached_samples, cached_stats = _samples(hit, recorded)
    fresh_samples, fresh_stats = _samples(load_catalog(shipped), recorded)
    assert cached_samples == fresh_samples
    assert cached_stats == fresh_stats
    assert len(cached_samples) > 1000
    assert hit.loaded_database is None  # every frame of the shipped DBC decoded without cantools


def test_one_byte_changed_in_the_dbc_or_the_catalog_loads_it_in_full(shipped: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dbc = tmp_path / DEFAULT_DBC.name
    load_cached_catalog(shipped, None, cache)
    # GIVEN the pack voltage's scale changed in the DBC (0.1 → 0.2 V per bit)
    dbc.write_text(
        dbc.read_text().replace("SG_ PackVoltage : 0|16@1+ (0.1,0)", "SG_ PackVoltage : 0|16@1+ (0.2,0)")
    )
    changed = load_cached_catalog(shipped, None, cache)
    assert changed.loaded_database is not None
    assert changed.messages["BMS_PackStatus"].signal("PackVoltage").scale == 0.2
    again = load_cached_catalog(shipped, None, cache)
    assert again.loaded_database is None and again.messages == changed.messages
    # GIVEN one byte of a DBC comment changed: nothing decodes differently, but the key is the bytes
    dbc.write_bytes(dbc.read_bytes().replace(b"BO_ 256 BMS_PackStatus", b"BO_ 256 BMS_PackStatus ", 1))
    assert load_cached_catalog(shipped, None, cache).loaded_database is not None
    # GIVEN a sampling policy changed in the catalog
    text = shipped.read_text()
    assert "min_interval_s = 1.0" in text
    shipped.write_text(text.replace("min_interval_s = 1.0", "min_interval_s = 1.5", 1))
    edited = load_cached_catalog(shipped, None, cache)
    assert edited.loaded_database is not None
    assert edited.by_name("Vehicle.Speed").policy.min_interval_s == 1.5
    assert load_cached_catalog(shipped, None, cache).by_name("Vehicle.Speed").policy.min_interval_s == 1.5
    assert len(list(cache.iterdir())) == 1  # one file per catalog and DBC, rewritten


DAMAGES = {
    "truncated": lambda content: content[: len(content) // 2],
    "empty": lambda content: b"",
    "one byte of the catalog altered": lambda content: content.replace(
        b'"Vehicle.Speed"', b'"Vehicle.Speef"', 1
    ),
    "not UTF-8": lambda content: b"\xff\xfe" + content,
    "checksum right, content not a catalog": lambda content: _rechecked(content, b'{"name": 3}'),
}


def _rechecked(content: bytes, body: bytes) -> bytes:
    import hashlib

    key = content.split(b"\n", 1)[0]
    return key + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_file_is_rebuilt_with_one_warning(
    damage: str, shipped: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    built = load_cached_catalog(shipped, None, cache)
    file = _cache_file(cache)
    file.write_bytes(DAMAGES[damage](file.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="protocols.catalog_cache"):
        rebuilt = load_cached_catalog(shipped, None, cache)
    assert rebuilt.loaded_database is not None
    assert rebuilt.signals == built.signals and rebuilt.messages == built.messages
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"catalog cache {file} is damaged"]
    assert load_cached_catalog(shipped, None, cache).loaded_database is None  # the rewritten file is good


def test_a_cache_that_cannot_be_written_is_not_fatal(
    shipped: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="protocols.catalog_cache"):
        catalog = load_cached_catalog(shipped, None, blocker / "cache")
    assert catalog.signals == load_catalog(shipped).signals
    assert len(caplog.records) == 1 and "cannot be written" in caplog.records[0].getMessage()


def test_a_refused_catalog_is_refused_the_same_with_a_cache(shipped: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_cached_catalog(shipped, None, cache)
    shipped.write_text(
        shipped.read_text().replace('signal = "WheelBasedVehicleSpeed"', 'signal = "NoSuchSignal"')
    )
    with pytest.raises(CatalogError) as full:
        load_catalog(shipped)
    with pytest.raises(CatalogError) as cached:
        load_cached_catalog(shipped, None, cache)
    assert str(cached.value) == str(full.value)
    (tmp_path / DEFAULT_DBC.name).unlink()
    with pytest.raises(Exception) as no_dbc_full:
        load_catalog(shipped)
    with pytest.raises(Exception) as no_dbc_cached:
        load_cached_catalog(shipped, None, cache)
    assert type(no_dbc_cached.value) is type(no_dbc_full.value)
    assert str(no_dbc_cached.value) == str(no_dbc_full.value)


FLOAT_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 512 Motor: 8 ECU
 SG_ Torque : 0|32@1- (1,0) [-1000|1000] "Nm" Vector__XXX
 SG_ Speed : 32|16@1+ (0.5,0) [0|8000] "rpm" Vector__XXX
SIG_VALTYPE_ 512 Torque : 1;
"""
FLOAT_CATALOG = """[catalog]
name = "float"
version = "1"
dbc = "motor.dbc"

[[can]]
message = "Motor"
signal = "Torque"
name = "Motor.Torque"
resolution = 0.1

[[can]]
message = "Motor"
signal = "Speed"
name = "Motor.Speed"
"""


def test_a_float_signal_of_a_cached_catalog_is_decoded_by_cantools(tmp_path: Path) -> None:
    """A message no bit-field plan decodes (an IEEE float signal) loads cantools' reading of the DBC when
    a decoder is built for it, and decodes as the catalog loaded in full does."""
    (tmp_path / "motor.dbc").write_text(FLOAT_DBC)
    catalog_path = tmp_path / "catalog.toml"
    catalog_path.write_text(FLOAT_CATALOG)
    cache = tmp_path / "cache"
    load_cached_catalog(catalog_path, None, cache)
    hit = load_cached_catalog(catalog_path, None, cache)
    assert hit.loaded_database is None
    frames = [
        Frame("test", 10.0 + i, 512, False, struct.pack("<fHxx", torque, speed), False, False)
        for i, (torque, speed) in enumerate([(12.5, 100), (-300.25, 4000), (float("nan"), 1), (2000.0, 2)])
    ]
    cached_samples, cached_stats = _samples(hit, frames)
    assert hit.loaded_database is not None
    fresh_samples, fresh_stats = _samples(load_catalog(catalog_path), frames)
    assert cached_samples == fresh_samples and cached_stats == fresh_stats
    assert [(s.signal, s.value) for s in cached_samples[:2]] == [
        ("Motor.Torque", 12.5),
        ("Motor.Speed", 50.0),
    ]
    assert cached_stats.skipped["out_of_range"] == 2  # NaN and 2000 Nm

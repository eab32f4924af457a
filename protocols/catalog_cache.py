"""A loaded catalog kept in a small file, so that an agent starting again with the same catalog and DBC
neither imports cantools nor parses the DBC (together ~0.1 s and 5 MB on the gateway).

`load_cached_catalog` keys the file on the SHA-256 of the catalog's text, its DBC's bytes, `CACHE_VERSION`
and cantools' version: a catalog or DBC changed by one byte, or new code, is loaded and checked in full
(`protocols.catalog.load_catalog`) and the file rewritten, atomically. Only a catalog that loaded is
cached, so a cache never turns a refusal into a start. A file that is damaged (truncated, altered, not
readable) is never fatal: the catalog is loaded in full and the file rewritten, with one warning.

The file holds the catalog's signals and the plain layout of each DBC message it maps (`MessageLayout`),
what `agent.decode_plans` builds the decode plans from; JSON keeps every number as read (an int stays an
int, a float round-trips exactly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from protocols.catalog import Catalog, Priority, SamplingPolicy, SignalSpec, load_catalog, parse_catalog
from protocols.dbc import read_dbc
from protocols.dbc_layout import MessageLayout, SignalLayout
from protocols.errors import CatalogError

log = logging.getLogger(__name__)
T = TypeVar("T")

CACHE_VERSION = 1  # raise when what is cached, or how a catalog or DBC is read into it, changes


def load_cached_catalog(path: Path, dbc_path: Path | None, cache_dir: Path | None) -> Catalog:
    """`load_catalog(path, dbc_path)`, from the cache in `cache_dir` when it holds this very catalog and DBC;
    else loaded in full and cached (no cache: `cache_dir` None). Raises what `load_catalog` raises."""
    if cache_dir is None:
        return load_catalog(path, dbc_path)
    try:
        text = path.read_text(encoding="utf-8")
        dbc = dbc_path if dbc_path is not None else _dbc_key(text, path)
        raw = dbc.read_bytes()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, CatalogError):
        return load_catalog(path, dbc_path)  # raises the error a full load gives
    key = cache_key(text, raw)
    file = cache_dir / f"catalog-{_digest(str(path.resolve()), str(dbc.resolve()))[:16]}.json"
    cached = _read(file, key, path, dbc)
    if cached is not None:
        return cached
    loaded = read_dbc(dbc, raw)  # the bytes the key was computed from
    catalog = parse_catalog(text, path, dbc_path, database=loaded.database, dbc_warnings=loaded.warnings)
    _write(file, key, catalog)
    return catalog


def cache_key(catalog_text: str, dbc_bytes: bytes) -> str:
    try:
        cantools_version = metadata.version("cantools")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency of every install
        cantools_version = ""
    return _digest(str(CACHE_VERSION), cantools_version, catalog_text, dbc_bytes)


def _digest(*parts: str | bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        sha.update(len(data).to_bytes(8, "little"))
        sha.update(data)
    return sha.hexdigest()


def _dbc_key(text: str, path: Path) -> Path:
    """The DBC a catalog names (its `dbc` key, next to the catalog)."""
    header = tomllib.loads(text).get("catalog")
    dbc = header.get("dbc") if isinstance(header, dict) else None
    if not isinstance(dbc, str) or not dbc:
        raise CatalogError(f"{path}: no `dbc` key")  # the full load explains it
    return path.parent / dbc


# --------------------------------------------------------------------------- the file
# Line 1: the key; line 2: the SHA-256 of line 3; line 3: the catalog as JSON.


def _read(file: Path, key: str, path: Path, dbc_path: Path) -> Catalog | None:
    try:
        content = file.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # not written yet (or cannot be: said when writing)
        return None
    except OSError as err:
        log.warning("catalog cache %s cannot be read (%s); loading the catalog in full", file, err)
        return None
    try:
        found_key, checksum, body = content.split(b"\n", 2)
        if found_key.decode("ascii") != key:
            return None  # another catalog, DBC or code: rebuilt
        if hashlib.sha256(body).hexdigest() != checksum.decode("ascii"):
            raise ValueError("checksum mismatch")
        return _catalog(json.loads(body), path, dbc_path)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("catalog cache %s is damaged (%s); loading the catalog in full", file, err)
        return None


def _write(file: Path, key: str, catalog: Catalog) -> None:
    body = json.dumps(_document(catalog), separators=(",", ":")).encode("utf-8")
    content = b"%s\n%s\n%s" % (key.encode("ascii"), hashlib.sha256(body).hexdigest().encode("ascii"), body)
    temporary: Path | None = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
        temporary = Path(name)
        with os.fdopen(descriptor, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # readable by the agent's user when root wrote it (check-config)
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(file)
    except OSError as err:
        log.warning(
            "catalog cache %s cannot be written (%s); the next start loads the catalog in full", file, err
        )
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def _document(catalog: Catalog) -> dict[str, Any]:
    return {
        "name": catalog.name,
        "version": catalog.version,
        "dbc_warnings": list(catalog.dbc_warnings),
        "signals": [asdict(spec) for spec in catalog.signals],
        "messages": [asdict(message) for message in catalog.messages.values()],
    }


def _catalog(doc: Mapping[str, Any], path: Path, dbc_path: Path) -> Catalog:
    messages = tuple(_message(m) for m in doc["messages"])
    return Catalog(
        path=path,
        name=_typed(doc["name"], str),
        version=_typed(doc["version"], str),
        dbc_path=dbc_path,
        messages={message.name: message for message in messages},
        signals=tuple(_signal_spec(s) for s in doc["signals"]),
        dbc_warnings=tuple(_typed(w, str) for w in doc["dbc_warnings"]),
    )


def _signal_spec(doc: Mapping[str, Any]) -> SignalSpec:
    policy = SamplingPolicy(**{k: _typed(v, float) for k, v in doc["policy"].items()})
    fields = {**doc, "priority": Priority(doc["priority"]), "policy": policy}
    return SignalSpec(**fields)


def _message(doc: Mapping[str, Any]) -> MessageLayout:
    signals = tuple(
        SignalLayout(**{**s, "multiplexer_ids": _tuple(s["multiplexer_ids"])}) for s in doc["signals"]
    )
    mux_values = {
        _typed(name, str): tuple(_typed(v, int) for v in values) for name, values in doc["mux_values"].items()
    }
    return MessageLayout(**{**doc, "signals": signals, "mux_values": mux_values})


def _tuple(values: list[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(_typed(v, int) for v in values)


def _typed(value: object, kind: type[T]) -> T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not {kind.__name__}")
    return value

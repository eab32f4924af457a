"""Checks before running: the catalogs a configuration names, loaded and checked against their DBCs, and
everything `voltgate-agent check-config` explains beyond the settings schema (interfaces, files, paths),
one sentence per problem. Imports no stage, so `check-config` stays quick."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import can

from agent.settings import AgentSettings, ConfigError
from protocols.catalog import DEFAULT_CATALOG, Catalog
from protocols.catalog_cache import load_cached_catalog
from protocols.errors import CatalogError, DbcError

log = logging.getLogger(__name__)


def catalog_cache_dir(settings: AgentSettings) -> Path | None:
    """Where loaded catalogs are kept between starts (`protocols.catalog_cache`): beside the buffer; None
    when the buffer's place is not writable (`preflight` says so, once)."""
    if _writable_problem(settings.buffer.path, "buffer path") is not None:
        return None
    return settings.buffer.path.parent / "catalog-cache"


def load_catalogs(settings: AgentSettings) -> dict[str, Catalog]:
    """Bus name → its catalog (loaded and checked against its DBC, or read back from its cache when neither
    changed), plus "gps" when GPS is enabled. Raises `ConfigError` with the file and line of the first
    problem."""
    catalogs: dict[str, Catalog] = {}
    loaded: dict[tuple[Path, Path | None], Catalog] = {}
    cache_dir = catalog_cache_dir(settings)
    wanted = [(bus.name, bus.catalog, bus.dbc) for bus in settings.can]
    wanted += [(log_.name, log_.catalog, log_.dbc) for log_ in settings.replay]
    if settings.gps.enabled:
        first = wanted[0] if wanted else ("gps", DEFAULT_CATALOG, None)
        wanted.append(("gps", first[1], first[2]))
    for name, catalog_path, dbc_path in wanted:
        key = (catalog_path, dbc_path)
        if key not in loaded:
            try:
                loaded[key] = load_cached_catalog(catalog_path, dbc_path, cache_dir)
            except (CatalogError, DbcError) as err:
                raise ConfigError(f"bus {name!r}: {err}") from err
            for warning in loaded[key].dbc_warnings:  # a DBC defect repaired on load, once per file
                log.warning("bus %r: %s", name, warning)
        catalogs[name] = loaded[key]
    return catalogs


def _writable_problem(path: Path, what: str) -> str | None:
    if path.exists():
        if path.is_dir():
            return f"{what} {path} is a directory, not a file"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{what} {path} is not writable by this user"
        return None
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be created: {ancestor} is not a writable directory"
    return None


def preflight(settings: AgentSettings, catalogs: dict[str, Catalog] | None = None) -> list[str]:
    """Everything `check-config` explains beyond the settings schema, one sentence per problem. The catalogs
    it loaded go into `catalogs` when given (`run` starts with them instead of parsing the DBCs again)."""
    problems: list[str] = []
    for bus in settings.can:
        if bus.interface not in can.interfaces.VALID_INTERFACES:
            known = ", ".join(sorted(can.interfaces.VALID_INTERFACES))
            problems.append(
                f"can bus {bus.name!r}: unknown python-can interface {bus.interface!r} (known: {known})"
            )
    for replay in settings.replay:
        if not replay.path.is_file():
            problems.append(f"replay {replay.name!r}: log file {replay.path} does not exist")
    try:
        loaded = load_catalogs(settings)
        if catalogs is not None:
            catalogs.update(loaded)
    except ConfigError as err:
        problems.append(str(err))
    if problem := _writable_problem(settings.buffer.path, "buffer path"):
        problems.append(problem)
    uplink = settings.uplink
    for what, path in (
        ("ca_file", uplink.ca_file),
        ("cert_file", uplink.cert_file),
        ("key_file", uplink.key_file),
    ):
        if path is not None and not path.is_file():
            problems.append(f"uplink {what} {path} does not exist")
    if settings.inference.enabled:
        for path in settings.inference.models:
            if not path.is_file():
                problems.append(f"inference model {path} does not exist")
    if not settings.can and not settings.replay and not settings.gps.enabled:
        problems.append("no source configured: add a [[can]] bus, a [[replay]] log or enable [gps]")
    return problems

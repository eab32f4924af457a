"""`voltgate-agent`: run the agent, check a config, or decode a recorded CAN log to CSV.

    voltgate-agent run --config FILE
    voltgate-agent check-config --config FILE
    voltgate-agent decode --dbc FILE [--catalog FILE] [--no-policy] LOG
    voltgate-agent catalog init --dbc FILE [--out FILE] [--force]
    voltgate-agent install [--root DIR] [--config SRC] [--venv PATH] [--skip-venv] [--upgrade]
    voltgate-agent uninstall [--root DIR] [--purge]
    voltgate-agent doctor --config FILE

Exit codes: 0 fine, 1 the agent failed at run time, 2 a user mistake (config, files, arguments) explained
in one sentence per problem on stderr. `doctor` has its own: 0 every check OK, 1 warnings only, 2 a
failure (`agent.doctor`). This is the only module that calls `sys.exit`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Final

from agent.install import add_commands as add_install_commands
from agent.preflight import preflight
from agent.settings import AgentSettings, ConfigError, load_settings
from protocols.catalog import DEFAULT_CATALOG, DEFAULT_DBC, Catalog, load_catalog
from protocols.dbc import read_dbc
from protocols.errors import CatalogError, DbcError

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

log = logging.getLogger("agent")


_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line, for journald and log shippers; fields passed with `extra=` (e.g. a driver
    alert's `alert_rule`, `alert_severity`) become keys of the object."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in document:
                plain = isinstance(value, str | int | float | bool) or value is None
                document[key] = value if plain else str(value)
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def configure_logging(log_format: str = "auto", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json" or (log_format == "auto" and under_systemd()):
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("agent.uplink.mqtt").setLevel(logging.WARNING)  # paho's per-packet chatter


def _explain(problems: list[str]) -> int:
    for problem in problems:
        print(f"voltgate-agent: {problem}", file=sys.stderr)
    return EXIT_USAGE


def _load(config: Path, catalogs: dict[str, Catalog] | None = None) -> AgentSettings | list[str]:
    try:
        settings = load_settings(config)
    except ConfigError as err:
        return [str(err)]
    problems = preflight(settings, catalogs)
    return problems or settings


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if isinstance(loaded, list):
        return _explain(loaded)
    sources = len(loaded.can) + len(loaded.replay) + int(loaded.gps.enabled)
    print(
        f"{args.config}: OK — vehicle {loaded.vehicle_id}, {sources} source(s), "
        f"broker {loaded.uplink.broker_url}, buffer {loaded.buffer.path}"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging()
    catalogs: dict[str, Catalog] = {}  # loaded once, by the checks
    loaded = _load(args.config, catalogs)
    if isinstance(loaded, list):
        return _explain(loaded)
    configure_logging(loaded.log_format)
    from agent.app import run

    try:
        asyncio.run(run(loaded, catalogs))
    except ConfigError as err:
        return _explain([str(err)])
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("agent failed")
        return EXIT_FAILED
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.doctor import Status, diagnose, exit_code, render

    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(f"FAIL  config  {err}: fix it (voltgate-agent check-config --config {args.config})")
        return int(Status.FAIL)
    report = diagnose(settings, args.config)
    sys.stdout.write(render(report.lines, report.header))
    return exit_code(report.lines)


def _warn(warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        print(f"voltgate-agent: warning: {warning}", file=sys.stderr)


def _is_shipped_dbc(dbc: Path) -> bool:
    return dbc.is_file() and DEFAULT_DBC.is_file() and dbc.samefile(DEFAULT_DBC)


def _decode_catalog(args: argparse.Namespace) -> Catalog:
    """`--catalog`; without it the shipped catalog for the shipped DBC, else every signal of the DBC
    under the starter catalog `catalog init` would write."""
    if args.catalog is not None:
        return load_catalog(args.catalog, args.dbc)
    if _is_shipped_dbc(args.dbc):
        return load_catalog(DEFAULT_CATALOG, args.dbc)
    from agent.catalog_init import starter_catalog

    return starter_catalog(args.dbc)


def cmd_decode(args: argparse.Namespace) -> int:
    from agent.decode import decode_log_to_csv
    from agent.logfiles import LogFormatError

    if not args.log.is_file():
        return _explain([f"log file {args.log} does not exist"])
    try:
        catalog = _decode_catalog(args)
    except (CatalogError, DbcError) as err:
        return _explain([str(err)])
    _warn(catalog.dbc_warnings)
    try:
        decode_log_to_csv(args.log, catalog, sys.stdout, apply_policy=not args.no_policy)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except LogFormatError as err:  # already one sentence naming the file, its format and what to do
        return _explain([str(err)])
    except (OSError, ValueError) as err:
        return _explain([f"cannot decode {args.log}: {err}"])
    return EXIT_OK


def cmd_catalog_init(args: argparse.Namespace) -> int:
    from agent.catalog_init import starter_catalog_toml

    out: Path | None = args.out
    if out is not None and out.exists() and not args.force:
        return _explain([f"{out} exists; pass --force to overwrite it"])
    try:
        loaded = read_dbc(args.dbc)
    except DbcError as err:
        return _explain([str(err)])
    _warn(loaded.warnings)
    text = starter_catalog_toml(loaded.database, args.dbc, out.parent if out else Path.cwd())
    if out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as err:
        return _explain([f"cannot write {out}: {err.strerror or err}"])
    print(
        f"{out}: {text.count('[[can]]')} signals of {args.dbc}; edit it, then --catalog {out}",
        file=sys.stderr,
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voltgate-agent", description="voltgate on-vehicle telematics agent"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument("--config", type=Path, required=True, help="agent TOML config")
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check-config", help="validate a config and explain every problem")
    check.add_argument("--config", type=Path, required=True, help="agent TOML config")
    check.set_defaults(handler=cmd_check_config)

    decode = commands.add_parser("decode", help="decode a recorded CAN log to CSV on stdout")
    decode.add_argument("--dbc", type=Path, required=True, help="the bus DBC")
    decode.add_argument(
        "--catalog",
        type=Path,
        default=None,
        help="signal catalog (TOML); default: the shipped one for the shipped DBC, else every signal "
        "of the DBC as `catalog init` names them",
    )
    decode.add_argument(
        "--no-policy", action="store_true", help="keep every decoded value (no sampling policy)"
    )
    decode.add_argument(
        "log",
        type=Path,
        help="recorded log: .log (candump -L), .csv (SavvyCAN/python-can), .asc, .trc, .blf, .mf4",
    )
    decode.set_defaults(handler=cmd_decode)

    catalog = commands.add_parser("catalog", help="signal catalogs")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    init = catalog_commands.add_parser(
        "init", help="write a starter catalog mapping every signal of a DBC, for an engineer to edit"
    )
    init.add_argument("--dbc", type=Path, required=True, help="the vehicle's DBC")
    init.add_argument("--out", type=Path, default=None, help="catalog file to write (default: stdout)")
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    init.set_defaults(handler=cmd_catalog_init)

    doctor = commands.add_parser(
        "doctor",
        help="check this gateway (CAN, GPS, clock, broker, buffer, models, disk); "
        "exit 0 all OK, 1 warnings, 2 a failure",
    )
    doctor.add_argument("--config", type=Path, required=True, help="agent TOML config")
    doctor.set_defaults(handler=cmd_doctor)

    add_install_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))


if __name__ == "__main__":
    main()

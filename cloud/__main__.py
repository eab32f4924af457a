"""`voltgate-cloud`: migrate | run | serve | check-config. The only place that exits or configures logging."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from pathlib import Path

from cloud import app
from cloud.errors import CloudError
from cloud.settings import CloudSettings, LogSettings, load_settings
from cloud.store import Store

EXIT_USAGE = 2  # bad configuration, unreachable database or broker: the operator's to fix

log = logging.getLogger("cloud")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_lines:
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.level, handlers=[handler], force=True)


async def _migrate(settings: CloudSettings) -> list[int]:
    store = await Store.open(settings.database, require_schema=False)
    try:
        return await store.migrate()
    finally:
        await store.close()


async def _check_database(settings: CloudSettings) -> str:
    store = await Store.open(settings.database)
    try:
        return store.flavour.value
    finally:
        await store.close()


def _check_broker(settings: CloudSettings) -> None:
    address = (settings.mqtt.host, settings.mqtt.port)
    try:
        with socket.create_connection(address, timeout=settings.database.connect_timeout_s):
            pass
    except OSError as err:
        raise CloudError(f"cannot reach the MQTT broker at {address[0]}:{address[1]}: {err}") from err


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voltgate-cloud", description="voltgate fleet receiver")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("migrate", "create or upgrade the database schema"),
        ("run", "receive from MQTT and store into the database until SIGTERM (and serve [web] if set)"),
        ("serve", "serve only the fleet views (JSON API, web page, /metrics) until SIGTERM"),
        ("check-config", "validate the configuration and reach the database and the broker"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--config", type=Path, help="TOML settings file (env VOLTGATE_CLOUD_* override it)"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log)
        if args.command == "migrate":
            applied = asyncio.run(_migrate(settings))
            print(f"schema {settings.database.schema_name}: applied {applied or 'nothing (up to date)'}")
        elif args.command == "check-config":
            flavour = asyncio.run(_check_database(settings))
            _check_broker(settings)
            print(f"configuration valid; database schema current ({flavour}); broker reachable")
        elif args.command == "serve":
            asyncio.run(app.serve(settings))
        else:
            asyncio.run(app.run(settings))
    except CloudError as err:
        print(f"voltgate-cloud: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

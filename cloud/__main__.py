"""`voltgate-cloud`: migrate | run | serve | check-config | import | certs | fleet. The only place that exits
or configures logging.

`certs` makes the fleet's CA and certificates (`cloud.certs`); it reads no settings and touches no service:

    voltgate-cloud certs ca       --dir DIR [--name NAME]
    voltgate-cloud certs broker   --dir DIR --host mqtt.example.org [--host 10.0.0.5 ...]
    voltgate-cloud certs receiver --dir DIR [--name voltgate-cloud]
    voltgate-cloud certs bus      --dir DIR --fleet depot-3 --vehicle bus-0042 [--vehicle bus-0043 ...]

each with [--days N] [--force]; one line per certificate says whether it was made or an existing one kept.

`import FILE [--fleet F] [--column-map a=b,...] [--max-age-days N]` stores an operator's telematics export
(CSV or xlsx) through the receiver's write path, exactly once (`cloud.history_import`).

`fleet keygen | config set | model push | status`: remote configuration and model rollouts
(`cloud.fleet_cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import ssl
import sys
from pathlib import Path

from cloud import app, certs, fleet_cli, history_import
from cloud.errors import CloudError, ConfigError
from cloud.settings import CloudSettings, LogSettings, MqttSettings, load_settings
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


# How long to wait, after the TLS handshake, for a broker to refuse our certificate: under TLS 1.3 it says so
# only then. A broker that accepts says nothing before the client's CONNECT, so the wait is spent in full.
_CERT_REFUSAL_WAIT_S = 1.0


def check_broker(settings: MqttSettings, timeout_s: float) -> None:
    """Reach the broker; with TLS also check that it trusts this receiver's certificate and we trust its own.

    It never sends an MQTT CONNECT: that could end the session of a replica with the same client id.
    """
    address = f"{settings.host}:{settings.port}"
    context: ssl.SSLContext | None = None
    if settings.tls:
        try:
            context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
            if settings.cert_file is not None and settings.key_file is not None:
                context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"cannot load the MQTT TLS files (mqtt.ca_file, cert_file, key_file): {err}"
            ) from err
    try:
        with socket.create_connection((settings.host, settings.port), timeout=timeout_s) as sock:
            if context is None:
                return
            with context.wrap_socket(sock, server_hostname=settings.host) as tls:
                tls.settimeout(_CERT_REFUSAL_WAIT_S)
                try:
                    closed = tls.recv(1) == b""
                except TimeoutError:
                    closed = False
                if closed:
                    raise CloudError(f"the MQTT broker at {address} closed the TLS connection at once")
    except ssl.SSLError as err:
        raise CloudError(f"the MQTT broker at {address} and this receiver disagree over TLS: {err}") from err
    except OSError as err:
        raise CloudError(f"cannot reach the MQTT broker at {address}: {err}") from err


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
    _import_parser(commands)
    _certs_parser(commands)
    fleet_cli.add_parser(commands)
    return parser


def _import_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "import", help="store an operator's telematics export (CSV or xlsx) as history, exactly once"
    )
    parser.add_argument("file", type=Path, help="timestamp, telematics_id, latitude, longitude, ...")
    parser.add_argument("--config", type=Path, help="TOML settings file (env VOLTGATE_CLOUD_* override it)")
    parser.add_argument("--fleet", help="the vehicles' fleet id (default: the fleet the database knows)")
    parser.add_argument(
        "--column-map", help="the file's own column names: FILE_COLUMN=LAYOUT_COLUMN,... (e.g. ts=timestamp)"
    )
    parser.add_argument(
        "--max-age-days", type=int, help="accept samples this old (default: ingest.max_sample_age_days)"
    )


def _certs_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "certs", help="make the fleet CA and certificates for the broker, receivers and buses"
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind, text, days in (
        ("ca", "the fleet CA (kept if there; --force replaces it: all it signed)", certs.CA_VALID_DAYS),
        ("broker", "the broker's server certificate", certs.SERVER_VALID_DAYS),
        ("receiver", "a receiver's client certificate (CN: --name)", certs.CLIENT_VALID_DAYS),
        ("bus", "a client certificate per bus (CN: FLEET/VEHICLE)", certs.CLIENT_VALID_DAYS),
    ):
        command = kinds.add_parser(kind, help=text)
        command.add_argument("--dir", type=Path, required=True, help="the fleet's certificate directory")
        command.add_argument("--days", type=int, default=days, help=f"validity in days (default {days})")
        command.add_argument("--force", action="store_true", help="replace existing files")
        if kind == "ca":
            command.add_argument("--name", default=certs.CA_NAME, help="the CA's common name")
        elif kind == "broker":
            command.add_argument(
                "--host", action="append", required=True, help="a DNS name or IP address clients use (repeat)"
            )
        elif kind == "receiver":
            command.add_argument("--name", default=certs.RECEIVER_NAME, help="the receiver identity (no '/')")
        else:
            command.add_argument("--fleet", required=True, help="the fleet id (agent uplink.fleet_id)")
            command.add_argument(
                "--vehicle", action="append", required=True, help="a vehicle id (agent vehicle_id; repeat)"
            )


def _certs(args: argparse.Namespace) -> None:
    if args.days < 1:
        raise certs.CertError("--days must be at least 1")
    pki = certs.FleetPki(args.dir)
    if args.kind == "ca":
        issued = [pki.init_ca(args.name, valid_days=args.days, force=args.force)]
    elif args.kind == "broker":
        issued = [pki.issue_broker(args.host, valid_days=args.days, force=args.force)]
    elif args.kind == "receiver":
        issued = [pki.issue_receiver(args.name, valid_days=args.days, force=args.force)]
    else:
        issued = [
            pki.issue_bus(args.fleet, vehicle, valid_days=args.days, force=args.force)
            for vehicle in args.vehicle
        ]
    for item in issued:
        verb = "made" if item.created else "kept"
        print(
            f"{verb} {item.cert_path} and {item.key_path.name} (CN {item.common_name},"
            f" valid until {item.not_after:%Y-%m-%d})"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "certs":
        try:
            _certs(args)
        except CloudError as err:
            print(f"voltgate-cloud: {err}", file=sys.stderr)
            return EXIT_USAGE
        return 0
    if args.command == "fleet":
        try:
            fleet_settings = load_settings(args.config) if fleet_cli.needs_settings(args) else None
            print("\n".join(asyncio.run(fleet_cli.run(args, fleet_settings))))
        except CloudError as err:
            print(f"voltgate-cloud: {err}", file=sys.stderr)
            return EXIT_USAGE
        return 0
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log)
        if args.command == "migrate":
            applied = asyncio.run(_migrate(settings))
            print(f"schema {settings.database.schema_name}: applied {applied or 'nothing (up to date)'}")
        elif args.command == "check-config":
            flavour = asyncio.run(_check_database(settings))
            check_broker(settings.mqtt, settings.database.connect_timeout_s)
            tls = " over TLS, certificates accepted both ways" if settings.mqtt.tls else ""
            print(f"configuration valid; database schema current ({flavour}); broker reachable{tls}")
        elif args.command == "import":
            report = asyncio.run(
                history_import.run_import(
                    settings,
                    args.file,
                    fleet=args.fleet,
                    column_map=args.column_map,
                    max_age_days=args.max_age_days,
                )
            )
            print("\n".join(report.lines()))
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

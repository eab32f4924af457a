"""`voltgate-cloud fleet ...`: the fleet's signing key, desired configuration, model pushes and their status.

    voltgate-cloud fleet keygen      --fleet F --dir DIR [--force]
    voltgate-cloud fleet config set  --fleet F [--vehicle V] section.key=value ... [--unset section.key ...]
    voltgate-cloud fleet model push  FILE --name NAME --fleet F --key DIR/F.ed25519.key
                                     (--canary V1,V2 | --percent P)
    voltgate-cloud fleet status      [--fleet F]

`keygen` makes the fleet's Ed25519 key pair (`cryptography`): `F.ed25519.key` (PKCS #8 PEM, mode 0600, kept
by whoever pushes models) and `F.ed25519.pub` (SubjectPublicKeyInfo PEM: what each agent is installed with).
The other commands write or read the database only (the receiver's fleet-control task publishes what they
set, `cloud.fleet_control`). A value is JSON when it parses as JSON (`5`, `true`, `[1, 2]`, `{"min_s": 5}`),
a string otherwise. The settings are checked for shape by `protocols.fleet_control` (sections `sampling`,
`uplink`, `alerts`); the agent checks their meaning and refuses the whole message if a part does not fit.
A model's feature version is read from its ONNX metadata (`voltgate.feature_version`, written by
`models/export.py`); its `voltgate.model`, when present, must be the pushed name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cloud import fleet_store
from cloud.errors import CloudError
from cloud.rollouts import packet_bytes, pick_canaries
from cloud.settings import CloudSettings
from cloud.store import Store
from protocols.downlink import DownlinkError
from protocols.fleet_control import (
    DESIRED_SECTIONS,
    MAX_MODEL_BYTES,
    DesiredConfig,
    ModelRelease,
    Outcome,
    encode_desired_config,
    key_id_of,
    sign_model,
)
from protocols.predictions import (
    FAULT_RISK_MODEL,
    FEATURE_VERSION_KEY,
    LARGE_DROP_MODEL,
    MODEL_NAME_KEY,
    SOC_DROP_MODEL,
)
from protocols.topics import is_valid_id

if TYPE_CHECKING:  # imported where a key is used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MODEL_NAMES: Final = (SOC_DROP_MODEL, LARGE_DROP_MODEL, FAULT_RISK_MODEL)
# The ONNX metadata keys `models/export.py` writes and `models/runtime.py` checks (cloud/ imports no models/).


class FleetCommandError(CloudError):
    """A `voltgate-cloud fleet` command that cannot be done as asked: one sentence why."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("fleet", help="remote configuration and model rollouts of a fleet's buses")
    actions = parser.add_subparsers(dest="fleet_command", required=True)
    keygen = actions.add_parser("keygen", help="make the fleet's Ed25519 model-signing key pair")
    keygen.add_argument("--fleet", required=True, help="the fleet id")
    keygen.add_argument("--dir", type=Path, required=True, help="where FLEET.ed25519.key and .pub go")
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair")

    config = actions.add_parser("config", help="the desired configuration of a fleet or a bus")
    config_actions = config.add_subparsers(dest="config_command", required=True)
    config_set = config_actions.add_parser("set", help="set (or --unset) settings; the rest is kept")
    config_set.add_argument("--fleet", required=True, help="the fleet id")
    config_set.add_argument("--vehicle", help="one bus only (its settings go over the fleet's)")
    config_set.add_argument("assignments", nargs="*", metavar="section.key=value")
    config_set.add_argument("--unset", action="append", default=[], metavar="section.key", help="remove one")

    model = actions.add_parser("model", help="signed model releases")
    model_actions = model.add_subparsers(dest="model_command", required=True)
    push = model_actions.add_parser(
        "push", help="sign a model and roll it out: canaries first, then the fleet"
    )
    push.add_argument("file", type=Path, help="the .onnx model")
    push.add_argument("--name", required=True, choices=MODEL_NAMES, help="the model name")
    push.add_argument("--fleet", required=True, help="the fleet id")
    push.add_argument("--key", type=Path, required=True, help="the fleet's private key (fleet keygen)")
    stage = push.add_mutually_exclusive_group(required=True)
    stage.add_argument("--canary", help="the canary buses, comma-separated")
    stage.add_argument("--percent", type=float, help="this percentage of the fleet's buses as canaries")

    status = actions.add_parser("status", help="desired against applied, per bus; rollouts and their state")
    status.add_argument("--fleet", help="one fleet only")
    for command in (config_set, push, status):
        command.add_argument(
            "--config", type=Path, help="TOML settings file (env VOLTGATE_CLOUD_* override it)"
        )


def needs_settings(args: argparse.Namespace) -> bool:
    return bool(args.fleet_command != "keygen")


def keygen(fleet: str, directory: Path, *, force: bool = False) -> list[str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    _check_id(fleet, "fleet")
    private_path, public_path = directory / f"{fleet}.ed25519.key", directory / f"{fleet}.ed25519.pub"
    if private_path.exists() and not force:
        raise FleetCommandError(f"{private_path} exists (--force replaces it, and every agent's public key)")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.unlink(missing_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return [
        f"made {private_path} (keep it private) and {public_path} (install it on every agent of {fleet});"
        f" key id {key_id_of(key.public_key())}"
    ]


def _check_id(value: str, what: str) -> str:
    if not is_valid_id(value):
        raise FleetCommandError(f"{what} id {value!r} is malformed: expected 1-64 of A-Z a-z 0-9 _ . -")
    return value


def _setting_path(text: str) -> tuple[str, str]:
    section, dot, key = text.partition(".")
    if not dot or not key:
        raise FleetCommandError(
            f"{text!r} is not section.key (sections: {', '.join(sorted(DESIRED_SECTIONS))})"
        )
    if section not in DESIRED_SECTIONS:
        raise FleetCommandError(
            f"section {section!r} cannot be set remotely; one of {', '.join(sorted(DESIRED_SECTIONS))}"
        )
    return section, key


def parse_assignments(assignments: list[str]) -> dict[str, dict[str, object]]:
    """`section.key=value` → {section: {key: value}}; the value is JSON when it parses, a string otherwise."""
    updates: dict[str, dict[str, object]] = {}
    for item in assignments:
        path, eq, text = item.partition("=")
        if not eq:
            raise FleetCommandError(f"{item!r} is not section.key=value")
        section, key = _setting_path(path.strip())
        try:
            value: object = json.loads(text)
        except ValueError:
            value = text
        updates.setdefault(section, {})[key] = value
    return updates


async def config_set(
    settings: CloudSettings, fleet: str, vehicle: str | None, assignments: list[str], unset: list[str]
) -> list[str]:
    _check_id(fleet, "fleet")
    if vehicle is not None:
        _check_id(vehicle, "vehicle")
    updates = parse_assignments(assignments)
    removals = [_setting_path(item) for item in unset]
    if not updates and not removals:
        raise FleetCommandError("nothing to set: give section.key=value (or --unset section.key)")
    store = await Store.open(settings.database)
    try:
        conn = store.connection
        if vehicle is not None and vehicle not in await fleet_store.fleet_vehicles(conn, fleet):
            raise FleetCommandError(
                f"the database knows no bus {vehicle!r} in fleet {fleet!r}"
                " (a bus is known once it has sent data)"
            )
        current = await fleet_store.stored_settings(conn, fleet, vehicle)
        for section, key in removals:
            current.get(section, {}).pop(key, None)
        for section, values in updates.items():
            current.setdefault(section, {}).update(values)  # type: ignore[arg-type]
        current = {section: values for section, values in current.items() if values}
        try:
            encode_desired_config(DesiredConfig(0, 1, current))
        except DownlinkError as err:
            raise FleetCommandError(f"the settings do not validate: {err}") from err
        revision = await fleet_store.put_settings(conn, fleet, vehicle, current)
    finally:
        await store.close()
    scope = f"bus {vehicle} of fleet {fleet}" if vehicle else f"fleet {fleet}"
    return [f"{scope}: desired configuration revision {revision}: {json.dumps(current, sort_keys=True)}"]


def model_metadata(model_bytes: bytes, path: Path) -> dict[str, str]:
    """The ONNX model's metadata_props; `FleetCommandError` when it is not a readable ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(model_bytes)
    except (DecodeError, ValueError) as err:
        raise FleetCommandError(f"{path} is not a readable ONNX model: {err}") from err
    return {prop.key: prop.value for prop in model.metadata_props}


def load_push(path: Path, name: str, key_path: Path) -> tuple[bytes, str, Ed25519PrivateKey]:
    """The model's bytes, its feature version (from its metadata) and the fleet's private key, checked."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        model = path.read_bytes()
    except OSError as err:
        raise FleetCommandError(f"cannot read the model: {err}") from err
    if not 0 < len(model) <= MAX_MODEL_BYTES:
        raise FleetCommandError(f"{path} has {len(model)} bytes; a model is 1..{MAX_MODEL_BYTES} bytes")
    meta = model_metadata(model, path)
    feature_version = meta.get(FEATURE_VERSION_KEY)
    if not feature_version or not is_valid_id(feature_version):
        raise FleetCommandError(
            f"{path} has no usable {FEATURE_VERSION_KEY} in its metadata: not a voltgate model"
        )
    if meta.get(MODEL_NAME_KEY, name) != name:
        raise FleetCommandError(f"{path} is model {meta[MODEL_NAME_KEY]!r} by its metadata, not {name!r}")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise FleetCommandError(f"cannot load the fleet key {key_path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise FleetCommandError(f"{key_path} is not an Ed25519 private key (voltgate-cloud fleet keygen)")
    return model, feature_version, key


async def model_push(
    settings: CloudSettings,
    path: Path,
    *,
    name: str,
    fleet: str,
    key_path: Path,
    canaries: list[str] | None,
    percent: float | None,
) -> list[str]:
    _check_id(fleet, "fleet")
    model, feature_version, key = await asyncio.to_thread(load_push, path, name, key_path)
    if percent is not None and not 0 < percent <= 100:
        raise FleetCommandError(f"--percent {percent} is not in (0, 100]")
    store = await Store.open(settings.database)
    try:
        conn = store.connection
        vehicles = await fleet_store.fleet_vehicles(conn, fleet)
        if not vehicles:
            raise FleetCommandError(f"the database knows no bus in fleet {fleet!r}")
        revision, rollout_id = await fleet_store.reserve_revision(conn, name)
        if canaries is not None:
            unknown = sorted(set(canaries) - set(vehicles))
            if unknown or not canaries:
                raise FleetCommandError(f"--canary names buses the fleet {fleet!r} does not have: {unknown}")
            chosen = tuple(sorted(set(canaries)))
        else:
            chosen = pick_canaries(vehicles, percent or 0.0, rollout_id)
        release = sign_model(
            key, revision=revision, rollout=rollout_id, name=name, feature_version=feature_version,
            model=model, ts_ms=int(datetime.now(UTC).timestamp() * 1000),
        )  # fmt: skip
        check_fits(release, fleet, settings.fleet_control.max_packet_bytes)
        await fleet_store.add_release(conn, fleet, release, chosen, percent)
    finally:
        await store.close()
    return [
        f"rollout {rollout_id}: {name} (features {feature_version}, sha256 {release.sha256.hex()[:16]}…,"
        f" key {release.key_id}) to fleet {fleet}: canaries {', '.join(chosen)} first"
    ]


def check_fits(release: ModelRelease, fleet: str, max_packet_bytes: int) -> None:
    """`FleetCommandError` unless the release, as published, fits in one broker packet."""
    size = packet_bytes(release, fleet)
    if size > max_packet_bytes:
        raise FleetCommandError(
            f"the signed release would be a {size}-byte MQTT packet, above the broker's limit of"
            f" {max_packet_bytes} (fleet_control.max_packet_bytes; Mosquitto's max_packet_size)"
        )


async def status(settings: CloudSettings, fleet: str | None) -> list[str]:
    store = await Store.open(settings.database)
    try:
        conn = store.connection
        names = [_check_id(fleet, "fleet")] if fleet else await fleet_store.fleets(conn)
        views = [await fleet_store.fleet_view(conn, name) for name in names]
    finally:
        await store.close()
    lines: list[str] = []
    for view in views:
        lines.append(f"fleet {view.fleet}: {len(view.vehicles)} buses")
        for rollout in view.rollouts:
            stage = f"{rollout.percent:g} %" if rollout.percent is not None else "named"
            reason = f" — {rollout.reason}" if rollout.reason else ""
            lines.append(
                f"  rollout {rollout.rollout_id} ({rollout.name}): {rollout.state.value};"
                f" canaries ({stage}) {', '.join(rollout.canaries)}{reason}"
            )
        for bus in view.buses:
            lines.append(f"  {bus.vehicle}: " + "; ".join(bus_summary(bus)))
    return lines or ["no fleet has a desired configuration or a rollout"]


def bus_summary(bus: fleet_store.BusControl) -> list[str]:
    """`config r12 applied`, `soc_drop r15 (canary) rolled_back: …`: one part per config and model."""
    parts = []
    desired = bus.desired_config.revision if bus.desired_config else None
    parts.append(_versus("config", desired, bus.applied_config))
    for model in bus.models:
        stage = f" ({model.rollout_state})" if model.rollout_state else ""
        parts.append(_versus(f"{model.name}{stage}", model.desired_revision, model.applied))
    return parts


def _versus(what: str, desired: int | None, applied: Outcome | None) -> str:
    want = f"r{desired}" if desired is not None else "nothing"
    if applied is None:
        return f"{what} wants {want}, nothing reported"
    detail = f": {applied.detail}" if applied.detail else ""
    got = f"r{applied.revision} {applied.state.value}{detail}"
    return f"{what} {got}" if desired == applied.revision else f"{what} wants {want}, has {got}"


async def run(args: argparse.Namespace, settings: CloudSettings | None) -> list[str]:
    """One `voltgate-cloud fleet` command; its output lines."""
    if args.fleet_command == "keygen":
        return keygen(args.fleet, args.dir, force=args.force)
    assert settings is not None
    if args.fleet_command == "config":
        return await config_set(settings, args.fleet, args.vehicle, args.assignments, args.unset)
    if args.fleet_command == "model":
        canaries = (
            [c.strip() for c in args.canary.split(",") if c.strip()] if args.canary is not None else None
        )
        return await model_push(
            settings, args.file, name=args.name, fleet=args.fleet, key_path=args.key,
            canaries=canaries, percent=args.percent,
        )  # fmt: skip
    return await status(settings, args.fleet)

"""What `agent.install` writes on a gateway, as text: pure functions of the few install-relevant facts.

- systemd-networkd `.network` files: one per SocketCAN bus, up at boot at its configured bitrate
  (`[CAN] BitRate=`, systemd.network(5)); python-can's socketcan interface does not set the bitrate itself.
- one udev rule file: the configured alert LEDs' attributes group-writable for the agent's group, and stable
  names under /dev/voltgate/ for USB serial adapters made for the job (SLCAN CAN adapters, GNSS receivers).
- a sysusers.d file declaring the `voltgate` system user and group (sysusers.d(5)).

Stdlib only: `python3 -m agent.install` runs this before the virtualenv exists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

AGENT_USER: Final = "voltgate"
AGENT_GROUP: Final = "voltgate"  # the LEDs' group; serial ports stay in Debian's `dialout` (the unit's
# SupplementaryGroups=)
HEADER: Final = "# voltgate: written by `voltgate-agent install`, removed by `voltgate-agent uninstall`.\n"

# Bus-off recovery: without a restart delay a CAN controller that went bus-off stays off until someone
# brings the link down and up (kernel Documentation/networking/can.rst, "restart-ms").
CAN_RESTART_SEC: Final = "100ms"

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ is 16 with the NUL
_LED_NAME = re.compile(r"^[A-Za-z0-9_:.+-]{1,64}$")  # what may stand unquoted in a udev KERNEL== match


class RenderError(ValueError):
    """A config value that cannot become a file here; the message names it."""


@dataclass(frozen=True, slots=True)
class CanLink:
    bus: str  # the [[can]] name
    interface_name: str  # the SocketCAN network interface (the [[can]] channel), e.g. can0
    bitrate: int | None  # None: leave the bitrate to whoever else sets it


@dataclass(frozen=True, slots=True)
class SerialAdapter:
    """A USB serial device made for one job, by USB vendor and product id (the ids its maker publishes)."""

    vendor_id: str
    product_id: str
    what: str
    link: str  # under /dev/voltgate/; `%s` takes the adapter's USB serial number


# Only adapters whose ids name the job: generic USB-serial bridges (FTDI, Prolific, CP210x) carry anything
# and keep their /dev/serial/by-id/ names. Ids: as these devices enumerate (`lsusb`).
SERIAL_ADAPTERS: Final[tuple[SerialAdapter, ...]] = (
    SerialAdapter("16d0", "117e", "CANable / CANtact (slcan firmware)", "slcan-%s"),
    SerialAdapter("1546", "01a7", "u-blox 7 GNSS receiver", "gps"),
    SerialAdapter("1546", "01a8", "u-blox 8 GNSS receiver", "gps"),
    SerialAdapter("1546", "01a9", "u-blox GNSS receiver", "gps"),
)


def network_file_name(link: CanLink) -> str:
    return f"80-voltgate-{link.interface_name}.network"


def can_network(link: CanLink) -> str:
    if not _IFNAME.match(link.interface_name):
        raise RenderError(
            f"[[can]] {link.bus}: channel {link.interface_name!r} is not a network interface name "
            "(socketcan channels are like can0)"
        )
    lines = [
        HEADER,
        f"# [[can]] {link.bus}: SocketCAN link up at boot.\n",
        "[Match]\n",
        f"Name={link.interface_name}\n",
        "\n",
        "[Link]\n",
        "# a CAN link has no address: it must not hold up network-online.target\n",
        "RequiredForOnline=no\n",
        "\n",
        "[CAN]\n",
    ]
    if link.bitrate is None:
        lines.append("# bitrate = none in the config: the link keeps the bitrate set elsewhere\n")
    else:
        lines.append(f"BitRate={link.bitrate}\n")
    lines.append(f"RestartSec={CAN_RESTART_SEC}\n")
    return "".join(lines)


def udev_rules(led_names: Sequence[str], group: str = AGENT_GROUP) -> str:
    """The LED class attributes the agent writes (`agent.leds`): brightness and trigger always, delay_on and
    delay_off once the timer trigger exists (the kernel creates them then and announces every trigger change
    with a change uevent carrying TRIGGER=, Linux drivers/leds/led-triggers.c, hence `change`)."""
    out = [HEADER]
    if led_names:
        out.append(
            f"\n# Alert LEDs named in the config: writable by group {group} (the agent's user runs in it).\n"
        )
    for name in led_names:
        if not _LED_NAME.match(name):
            raise RenderError(f"alerts: LED name {name!r} cannot be matched by a udev rule")
        attributes = " ".join(f"/sys%p/{a}" for a in ("brightness", "trigger", "delay_on", "delay_off"))
        out.append(
            f'ACTION=="add|change", SUBSYSTEM=="leds", KERNEL=="{name}", '
            f'RUN+="/bin/chgrp -f {group} {attributes}", RUN+="/bin/chmod -f g+w {attributes}"\n'
        )
    out.append(
        "\n# USB serial adapters made for the job, by vendor:product: stable names under /dev/voltgate/ for"
        "\n# the config (Debian puts ttyUSB/ttyACM in group dialout, the unit's SupplementaryGroups).\n"
    )
    for adapter in SERIAL_ADAPTERS:
        link = adapter.link.replace("%s", "$env{ID_SERIAL_SHORT}")
        has_serial = 'ENV{ID_SERIAL_SHORT}=="?*", ' if "%s" in adapter.link else ""
        out.append(
            f"# {adapter.what}\n"
            f'ACTION=="add", SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{adapter.vendor_id}", '
            f'ATTRS{{idProduct}}=="{adapter.product_id}", {has_serial}SYMLINK+="voltgate/{link}"\n'
        )
    return "".join(out)


def sysusers(user: str = AGENT_USER, group: str = AGENT_GROUP) -> str:
    return (
        HEADER
        + f"g {group} -\n"
        + f'u {user} -:{group} "voltgate telematics agent" /var/lib/voltgate /usr/sbin/nologin\n'
    )


def unit_for_venv(unit_text: str, venv: str, shipped_venv: str = "/opt/voltgate/venv") -> str:
    """The shipped unit with its virtualenv paths pointed at `venv`."""
    return unit_text.replace(f"{shipped_venv}/", f"{venv.rstrip('/')}/")

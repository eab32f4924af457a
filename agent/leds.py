"""Driver alert lamps as Linux LED class devices (`Documentation/leds/leds-class.rst`).

Per severity a device name; warning and info are steady on (`brightness` = `max_brightness`), critical blinks
with the `timer` trigger (`delay_on`/`delay_off`) or, when the kernel offers no timer trigger, by a software
loop writing `brightness` (the alert stage runs it). An LED shared by several severities shows the most urgent
one; an LED with no active alert is off. A missing LED is logged once.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from agent.records import Severity

log = logging.getLogger("agent.alerts")


class LedPattern(enum.IntEnum):
    OFF = 0
    ON = 1
    BLINK = 2


PATTERN_OF: Final[Mapping[Severity, LedPattern]] = {
    "info": LedPattern.ON,
    "warning": LedPattern.ON,
    "critical": LedPattern.BLINK,
}


def led_patterns(
    active: Iterable[Severity], led_names: Mapping[Severity, str | None]
) -> dict[str, LedPattern]:
    """Every configured LED → what it shows for the active severities (the most urgent wins)."""
    wanted = {name: LedPattern.OFF for name in led_names.values() if name}
    for severity in active:
        name = led_names.get(severity)
        if name:
            wanted[name] = max(wanted[name], PATTERN_OF[severity])
    return wanted


class Leds:
    """Linux LED class devices under `root` (`/sys/class/leds`, or a directory laid out like it in tests).

    `show` writes only what changed; its file writes are blocking (tiny sysfs writes), so the async shell
    calls it through `asyncio.to_thread`."""

    def __init__(self, root: Path, *, blink_on_ms: int, blink_off_ms: int) -> None:
        self.root = root
        self.blink_on_ms = blink_on_ms
        self.blink_off_ms = blink_off_ms
        self.shown: dict[str, LedPattern] = {}
        self.soft_blink: set[str] = set()  # blinking LEDs without a `timer` trigger
        self._complained: set[str] = set()
        self._offered: dict[str, list[str]] = {}
        self._lock = threading.Lock()  # `show` and the software blink write from worker threads

    def show(self, patterns: Mapping[str, LedPattern]) -> None:
        with self._lock:
            for name, pattern in patterns.items():
                if self.shown.get(name) == pattern:
                    continue
                if self._show(name, pattern):
                    self.shown[name] = pattern

    def all_off(self) -> None:
        self.show({name: LedPattern.OFF for name in self.shown})

    def blink_step(self, on: bool) -> None:
        """One half-period of the software blink: every soft-blinking LED on or off."""
        with self._lock:
            for name in self.soft_blink:
                with contextlib.suppress(OSError):
                    self._write(name, "brightness", self._max_brightness(name) if on else "0")

    def _show(self, name: str, pattern: LedPattern) -> bool:
        led = self.root / name
        if not led.is_dir():
            self._complain_once(name, "LED %s not found under %s; skipped", name, self.root)
            return False
        self._triggers(name)
        self.soft_blink.discard(name)
        try:
            if pattern is LedPattern.BLINK:
                if "timer" in self._triggers(name):
                    self._write(name, "trigger", "timer")
                    self._write(name, "delay_on", str(self.blink_on_ms))
                    self._write(name, "delay_off", str(self.blink_off_ms))
                else:
                    self._untrigger(name)
                    self.soft_blink.add(name)
                    self._write(name, "brightness", self._max_brightness(name))
            else:
                self._untrigger(name)
                self._write(name, "brightness", self._max_brightness(name) if pattern else "0")
        except OSError as err:
            self._complain_once(name, "LED %s cannot be set (%s); skipped", name, err)
            return False
        return True

    def _triggers(self, name: str) -> list[str]:
        """The triggers the kernel offers (`none [timer] heartbeat`: the bracketed one is current), read
        once per LED, before this class writes to it."""
        if name not in self._offered:
            try:
                text = (self.root / name / "trigger").read_text()
            except OSError:
                text = ""
            self._offered[name] = [word.strip("[]") for word in text.split()]
        return self._offered[name]

    def _untrigger(self, name: str) -> None:
        if (self.root / name / "trigger").exists():
            self._write(name, "trigger", "none")

    def _max_brightness(self, name: str) -> str:
        try:
            value = (self.root / name / "max_brightness").read_text().strip()
        except OSError:
            return "1"
        return value if value.isdigit() and value != "0" else "1"

    def _write(self, name: str, attribute: str, value: str) -> None:
        (self.root / name / attribute).write_text(value)

    def _complain_once(self, name: str, message: str, *args: object) -> None:
        if name not in self._complained:
            self._complained.add(name)
            log.warning(message, *args)

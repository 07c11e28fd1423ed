"""The recording light: a gpiozero LED, confirmed on before any audio is kept (I1, I2)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from device.config import IndicatorSettings
from device.errors import IndicatorError

log = logging.getLogger(__name__)

BOUNCE_S = 0.05


def make_pin_factory(name: str | None) -> Any:
    """None = gpiozero's own choice (lgpio on a Pi); "mock" = gpiozero's MockFactory."""
    if name is None:
        return None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    raise IndicatorError(f"indicator.pin_factory {name!r} is not supported; use \"mock\" or leave it unset")


class Indicator:
    """One LED. `recording()` returns only once the pin reads back as lit."""

    def __init__(self, settings: IndicatorSettings, pin_factory: Any = None) -> None:
        from gpiozero import LED
        from gpiozero.exc import GPIOZeroError

        self._closed = False
        try:
            self._led = LED(
                settings.pin,
                active_high=settings.active_high,
                initial_value=False,
                pin_factory=pin_factory,
            )
        except (GPIOZeroError, ValueError, OSError) as exc:
            raise IndicatorError(
                f"cannot use indicator pin {settings.pin!r}: {exc}; check indicator.pin, GPIO "
                "permissions (the user must be in the gpio group) or set indicator.pin_factory"
            ) from None
        self.pin = self._led.pin

    def recording(self) -> None:
        """Turn the light on and confirm it by reading the pin back; raise if it is not lit."""
        try:
            self._led.on()
            lit = self._led.is_lit
        except Exception as exc:  # any pin driver failure means: not confirmed
            raise IndicatorError(f"the recording light could not be turned on: {exc}") from None
        if not lit:
            raise IndicatorError("the recording light did not read back as on")

    def idle(self) -> None:
        try:
            self._led.off()
        except Exception as exc:  # never crash the loop; a stuck-on light only over-reports
            log.error("could not turn the recording light off: %s", exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.idle()
        self._led.close()


class MuteControls:
    """The hardware mute button and the mute LED. The button's callback (gpiozero's thread) only
    flips the flag; the listener closes or reopens the stream."""

    def __init__(self, button_pin: str | int | None, led_pin: str | int | None,
                 toggle: Callable[[], None], pin_factory: Any = None) -> None:
        from gpiozero import LED, Button
        from gpiozero.exc import GPIOZeroError

        self._button = self._led = None
        try:
            if button_pin is not None:
                self._button = Button(button_pin, pull_up=True, bounce_time=BOUNCE_S,
                                      pin_factory=pin_factory)
                self._button.when_pressed = lambda: toggle()
            if led_pin is not None:
                self._led = LED(led_pin, initial_value=False, pin_factory=pin_factory)
        except (GPIOZeroError, ValueError, OSError) as exc:
            raise IndicatorError(f"cannot use mute pins ({button_pin!r}, {led_pin!r}): {exc}") from None

    def show(self, muted: bool) -> None:
        if self._led is not None:
            self._led.value = muted

    def close(self) -> None:
        for device in (self._button, self._led):
            if device is not None:
                device.close()

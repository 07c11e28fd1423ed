"""The recording light: a gpiozero LED, confirmed on before any audio is kept (I1, I2)."""

from __future__ import annotations

import logging
from typing import Any

from device.config import IndicatorSettings
from device.errors import IndicatorError

log = logging.getLogger(__name__)


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

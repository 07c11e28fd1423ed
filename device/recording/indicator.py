"""The recording light: a gpiozero LED, confirmed on before any audio is kept (I1, I2)."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from device import SAMPLE_RATE_HZ
from device.core.config import IndicatorSettings
from device.core.errors import IndicatorError

log = logging.getLogger(__name__)

BOUNCE_S = 0.05


def default_pin_factory() -> Any:
    """gpiozero's own choice of pin driver (lgpio on a Pi), made once per process. gpiozero warns
    for each driver it tries and cannot load (four warnings on a machine without GPIO); here
    they become one error, said only when no driver loads, and the driver used is logged once."""
    from gpiozero import Device
    from gpiozero.exc import BadPinFactory, NativePinFactoryFallback, PinFactoryFallback

    if Device.pin_factory is not None:
        return Device.pin_factory
    quiet = (PinFactoryFallback, NativePinFactoryFallback)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            Device.ensure_pin_factory()
        except BadPinFactory as exc:
            tried = "; ".join(str(w.message).removeprefix("Falling back from ") for w in said
                              if issubclass(w.category, PinFactoryFallback))
            raise BadPinFactory(f"no GPIO pin driver could be loaded ({tried or exc})") from None
        finally:
            for w in said:
                if not issubclass(w.category, quiet):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    log.info("GPIO pin driver: %s", pin_driver(Device.pin_factory))
    return Device.pin_factory


def pin_driver(factory: Any) -> str:
    """A pin factory as gpiozero names its drivers: lgpio, rpigpio, pigpio, native, mock."""
    return type(factory).__name__.removesuffix("Factory").lower()


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
                pin_factory=pin_factory or default_pin_factory(),
            )
        except (GPIOZeroError, ValueError, OSError) as exc:
            raise IndicatorError(
                f"cannot use indicator pin {settings.pin!r}: {exc}; check indicator.pin, GPIO "
                "permissions (the user must be in the gpio group) or set indicator.pin_factory"
            ) from None
        self.pin = self._led.pin
        self.driver = pin_driver(self._led.pin_factory)
        """Which gpiozero pin driver runs the light (lgpio on a Pi)."""

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
        self.lock = threading.Lock()
        """Held while the mute LED is written: the listener shows the mute, and a Confirmer that
        borrows the LED blinks it from other threads (gpiozero's blink is not thread-safe)."""
        self.showing = False
        """What the mute LED shows between a borrowing Confirmer's patterns: muted, as last shown."""
        try:
            if button_pin is not None:
                self._button = Button(button_pin, pull_up=True, bounce_time=BOUNCE_S,
                                      pin_factory=pin_factory)
                self._button.when_pressed = lambda: toggle()
            if led_pin is not None:
                self._led = LED(led_pin, initial_value=False, pin_factory=pin_factory)
        except (GPIOZeroError, ValueError, OSError) as exc:
            raise IndicatorError(f"cannot use mute pins ({button_pin!r}, {led_pin!r}): {exc}") from None

    @property
    def led(self) -> Any:
        return self._led

    def show(self, muted: bool) -> None:
        with self.lock:
            self.showing = muted
            if self._led is not None:
                self._led.value = muted

    def close(self) -> None:
        for device in (self._button, self._led):
            if device is not None:
                device.close()


BLINK_S = 0.15
"""Done: two blinks of this long, with as long between them."""
NOT_CAUGHT_S, NOT_CAUGHT_N = 0.05, 5
"""Didn't catch that: five short flickers (half a second), unlike the two slow blinks of done."""
WAITING_S = 0.5
"""Waiting for a spoken yes: a slow, even blink (one a second) until it comes or the time is up."""
TONE_HZ, TONE_S = (880.0, 1320.0), 0.09
CLOSE_WAIT_S = 1.0
CLOSE_GRACE_S = 0.05
"""A borrowed mute LED shows whether the speaker is muted this long after a pattern's last blink."""


class Confirmer:
    """The feedback LED, never the recording light (which means one thing only, I3): the confirm
    LED (voice.confirm_led_pin), else the mute LED when there is one. Three patterns:
    - done: a spoken command was carried out: two blinks (and with voice.confirm_sound two rising
      tones through the default output);
    - not caught: an utterance came close to a command but was not surely one, so it was dropped:
      five short flickers (with the sound: two falling tones), to say it again;
    - waiting: a command asks for a spoken yes: slow blinking until the wait is over.
    After a pattern the LED shows its resting state: off for the confirm LED; for a borrowed mute
    LED, what the listener last showed on it (MuteControls.showing), which may have changed
    meanwhile (a spoken "mute", the button pressed during a wait for a yes).
    Failures are logged, never raised: the command is done (or dropped) either way."""

    def __init__(self, led_pin: str | int | None, mute: MuteControls | None, sound: bool,
                 pin_factory: Any = None) -> None:
        """Without a confirm LED, `mute`'s LED is borrowed, written under its lock."""
        from gpiozero import LED
        from gpiozero.exc import GPIOZeroError

        self._own = None
        try:
            if led_pin is not None:
                self._own = LED(led_pin, initial_value=False, pin_factory=pin_factory)
        except (GPIOZeroError, ValueError, OSError) as exc:
            raise IndicatorError(f"cannot use voice.confirm_led_pin {led_pin!r}: {exc}") from None
        borrowed = mute if self._own is None else None
        self._led = self._own if borrowed is None else borrowed.led
        self._resting: Callable[[], bool] = (lambda: borrowed.showing) if borrowed else (lambda: False)
        self._sound = sound
        self._busy_until = 0.0
        """When the pattern showing now ends (monotonic seconds; 0 for none or the endless one)."""
        self._pattern = 0
        """Counts the patterns begun: a pattern's end shows the resting state only if it is the last."""
        self._lock = borrowed.lock if borrowed else threading.Lock()

    def confirm(self) -> None:
        self._blink(BLINK_S, BLINK_S, 2)
        self._play(tones(rising=True))

    def not_caught(self) -> None:
        self._blink(NOT_CAUGHT_S, NOT_CAUGHT_S, NOT_CAUGHT_N)
        self._play(tones(rising=False))

    def waiting(self) -> None:
        self._blink(WAITING_S, WAITING_S, None)

    def waited(self) -> None:
        """The wait for a yes is over (a yes, a no, none, or it was cut short): the waiting blink
        stops and the LED shows its resting state."""
        with self._lock:
            self._pattern += 1
            self._busy_until = 0.0
            self._rest(self._pattern)

    def _blink(self, on_s: float, off_s: float, n: int | None) -> None:
        if self._led is None:
            return
        with self._lock:
            self._pattern += 1
            try:
                self._led.blink(on_time=on_s, off_time=off_s, n=n, background=True)
            except Exception as exc:
                log.warning("could not blink the confirm LED: %s", exc)
                return
            self._busy_until = time.monotonic() + n * (on_s + off_s) if n else 0.0
            if n and self._own is None:  # gpiozero ends a blink dark: a muted speaker's LED is lit
                end = threading.Timer(n * (on_s + off_s) + CLOSE_GRACE_S, self._end_of,
                                      args=(self._pattern,))
                end.daemon = True
                end.start()

    def _end_of(self, pattern: int) -> None:
        with self._lock:
            self._rest(pattern)

    def _rest(self, pattern: int) -> None:
        if self._led is None or pattern != self._pattern:
            return  # a newer pattern shows now
        try:
            self._led.value = bool(self._resting())
        except Exception as exc:
            log.warning("could not set the confirm LED: %s", exc)

    def _play(self, sound: Any) -> None:
        if self._sound:
            try:
                import sounddevice

                sounddevice.play(sound, SAMPLE_RATE_HZ)  # returns at once; plays in the background
            except Exception as exc:  # no output device is not a reason to fail a delete
                log.warning("could not play the confirm tone: %s", exc)

    def close(self) -> None:
        """Let a done or didn't-catch-that pattern finish (it is short), then leave the LED off."""
        if 0 < (left := self._busy_until - time.monotonic()) <= CLOSE_WAIT_S:
            time.sleep(left)
        with self._lock:
            self._pattern += 1  # a pattern's end still pending does nothing now: its LED may close
        if self._own is not None:
            self._own.off()
            self._own.close()


def tones(rising: bool = True) -> Any:
    import numpy as np

    t = np.arange(int(TONE_S * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    fade = np.minimum(1.0, np.minimum(t, TONE_S - t) / 0.01)
    parts = [0.3 * np.sin(2 * np.pi * hz * t) * fade for hz in TONE_HZ]
    first, second = parts if rising else parts[::-1]
    return np.concatenate([first, np.zeros(len(t) // 2), second]).astype(np.float32)

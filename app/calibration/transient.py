"""Retrying one driver call after a transient error, instead of the whole die.

A timeout or a lost contact (:data:`hardware.driver.TRANSIENT_ERRORS`) on one of the ~130 calls of a
characterization would otherwise throw away every read before it. :class:`RetryingCalls` repeats the
failed call, up to ``attempts`` times in all; after a lost contact it first probes the die again and
restores what the call needs on the die (the macro's test pattern, the programmed image), because a
re-seated die may have powered up afresh. The driver charges the tester time of every attempt as it
charges any call; the error of the last attempt propagates, so a die whose contact is really gone
still fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hardware.driver import TRANSIENT_ERRORS, ContactError, DieAddress, Driver, ProtocolError

T = TypeVar("T")

DEFAULT_ATTEMPTS = 3
"""Attempts per driver call (the first try and two retries)."""


class RetryingCalls:
    """Driver calls on the die at ``address`` with bounded retries; ``retries`` counts the repeats.

    ``attempts`` : tries per call, >= 1 (1: no retry)
    """

    def __init__(self, driver: Driver, address: DieAddress, *, attempts: int = DEFAULT_ATTEMPTS) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.driver = driver
        self.address = address
        self.attempts = attempts
        self.retries = 0
        self._contact_lost = False

    def call(self, fn: Callable[[], T], *, restore: Callable[[], None] | None = None) -> T:
        """``fn()``, repeated after a transient error; after a lost contact the die is probed again and
        ``restore()`` (e.g. rewriting the macro that ``fn`` reads) runs before the next attempt."""
        attempt = 1
        while True:
            try:
                if self._contact_lost:
                    self._reprobe()
                    if restore is not None:
                        restore()
                return fn()
            except TRANSIENT_ERRORS as e:
                if attempt >= self.attempts:
                    raise
                attempt += 1
                self.retries += 1
                if isinstance(e, ContactError):
                    self._contact_lost = True

    def _reprobe(self) -> None:
        ident = self.driver.probe(self.address)
        if ident.ecid != self.address.ecid:
            raise ProtocolError(
                f"re-probe reached {ident.ecid}, expected {self.address.ecid}", protocol_code=0x11, op="probe"
            )
        self._contact_lost = False

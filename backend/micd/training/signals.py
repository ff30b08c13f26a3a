"""SIGTERM/SIGINT (and SIGBREAK on Windows) turn into a polite request: the loop finishes the iteration, saves a checkpoint and exits 3."""

from __future__ import annotations

import signal
from typing import Optional


class CancelFlag:
    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._previous = {}

    def install(self) -> "CancelFlag":
        # SIGBREAK is what a Windows parent can send (Ctrl+Break) to ask for the same polite stop.
        for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGBREAK", None)):
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

"""SIGTERM/SIGINT (and SIGBREAK on Windows), or the file named by MICD_STOP_FILE appearing, turn into a polite request:
the loop finishes the iteration, saves a checkpoint and exits 3. The file is how a GUI parent without a console (Slicer
on Windows) asks for that stop."""

from __future__ import annotations

import os
import signal
from typing import Optional

from micd.contract import STOP_FILE_VARIABLE


class CancelFlag:
    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self.stop_file = os.environ.get(STOP_FILE_VARIABLE) or None
        self.stop_file_seen = False
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
        if self.signal is None and not self.stop_file_seen and self.stop_file:
            self.stop_file_seen = os.path.exists(self.stop_file)
        return self.signal is not None or self.stop_file_seen

    @property
    def name(self) -> str:
        if self.signal:
            return signal.Signals(self.signal).name
        return "the stop file" if self.stop_file_seen else ""

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

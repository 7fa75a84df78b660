"""Stop long work cleanly on SIGTERM or SIGINT: `with stop_signal() as stop:` and the loop checks
`stop.requested` between steps, checkpoints and returns, so `kill PID` (or the end of a session that
sends SIGTERM) loses nothing. A second signal of the same kind acts as it would without the block.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class StopSignal:
    requested: str | None = None  # the signal's name once one arrived


@contextmanager
def stop_signal() -> Iterator[StopSignal]:
    """Record the first SIGTERM/SIGINT instead of dying; restore the handlers on exit.

    Outside the main thread (where Python cannot install handlers) it records nothing.
    """
    stop = StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handle(signum: int, frame: object) -> None:
        stop.requested = signal.Signals(signum).name
        signal.signal(signum, previous[signum])  # a second one is not deferred

    for sig in SIGNALS:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

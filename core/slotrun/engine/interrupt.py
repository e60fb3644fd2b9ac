"""SIGINT/SIGTERM during training: finish the current step, save a checkpoint, stop.

A second Ctrl-C aborts at once (the newest complete checkpoint still loads). The stop surfaces as
TrainingInterrupted, a KeyboardInterrupt, so the command line exits with status 130 like any interrupted
program; re-running the same command resumes from the checkpoint just written.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        name = signal.Signals(signum).name if signum else "a signal"
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"stopped by {name} at step {step}; {saved}; re-run the same command to resume")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint


class StopFlag:
    def __init__(self) -> None:
        self.signum = 0

    @property
    def requested(self) -> bool:
        return self.signum != 0


@contextmanager
def stop_on_signals(announce: bool = True) -> Iterator[StopFlag]:
    """Turn SIGINT/SIGTERM into a flag the training loop checks after each step (main thread only:
    elsewhere Python cannot install handlers and signals keep their default behaviour)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        flag.signum = signum
        if announce:
            print(f"\nslotrun: {signal.Signals(signum).name} received: finishing this step and saving a "
                  "checkpoint (Ctrl-C again to abort now)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)

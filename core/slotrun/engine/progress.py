"""Telling the person at the terminal what training is doing: a tqdm bar (steps/s, loss, ETA) on a terminal,
plain lines every `every` steps otherwise (CI logs, cluster job logs). Everything goes to stderr so that stdout
stays free for the command's JSON result."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_line(step: int, total: int, loss: float | None, rate: float) -> str:
    """`step 100/1000 loss 0.0123 2.3 steps/s eta 6m30s`"""
    loss_text = "nan" if loss is None else f"{loss:.4g}"
    eta = format_duration((total - step) / rate) if rate > 0 else "?"
    return f"step {step}/{total} loss {loss_text} {rate:.3g} steps/s eta {eta}"


class Progress:
    def __init__(self, total: int, start: int, *, every: int, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.total = total
        self.every = every
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.mark_step = start
        self.mark_time = time.perf_counter()
        self.rate = 0.0
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, file=self.stream, unit="step", dynamic_ncols=True,
                            smoothing=0.1)

    def update(self, step: int, loss: float | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
            return
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        if step > self.mark_step:
            self.rate = (step - self.mark_step) / max(now - self.mark_time, 1e-9)
        self.mark_step, self.mark_time = step, now
        print(format_line(step, self.total, loss, self.rate), file=self.stream, flush=True)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

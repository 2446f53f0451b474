"""Progress lines for long work: count, rate and ETA, printed at most every few seconds.

Plain lines rather than a redrawn bar, so the output reads the same in a terminal, a CI log and a Ray
job's log.
"""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, total: int | None, what: str, every: float = 5.0, stream=None):
        self.total, self.what, self.every = total, what, every
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every or (self.total is not None and self.done >= self.total):
            self._last = now
            self.stream.write(self.line(extra) + "\n")
            self.stream.flush()

    def line(self, extra: str = "") -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.what}: {self.done}" + (f"/{self.total}" if self.total is not None else "")]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.2f}/s")
        if self.total is not None and rate > 0 and self.done < self.total:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if extra:
            parts.append(extra)
        return " | ".join(parts)

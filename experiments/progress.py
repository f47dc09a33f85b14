"""A progress line every few seconds (the warm-up can take minutes with the real LLM)."""

from __future__ import annotations

import sys
import threading
import time


class Ticker:
    """Counts updates and prints `label: done/total` at most every `every_s` seconds, and at the end."""

    def __init__(self, label: str, total: int, every_s: float = 5.0) -> None:
        self.label = label
        self.total = total
        self.every_s = every_s
        self.done = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.done >= self.total or now - self._last >= self.every_s:
                self._last = now
                print(f"[experiment] {self.label}: {self.done}/{self.total}", file=sys.stderr, flush=True)

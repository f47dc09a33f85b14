"""Is the Flink score job running? Asked of Flink's REST API for /health, with a short timeout, and
the answer reused for a few seconds so /health stays cheap however often it is polled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.flink_rest import list_jobs
from storage_service.rules import flink_job_state


@dataclass(frozen=True)
class FlinkJobStatus:
    running: bool
    state: str  # RUNNING, RESTARTING, ..., FAILED, missing, or "unreachable: <why>"


class FlinkJobCheck:
    def __init__(
        self,
        rest_url: str,
        *,
        timeout_s: float,
        cache_s: float,
        fetch: Callable[[], list[dict]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch or (lambda: list_jobs(rest_url, timeout_s=timeout_s))
        self._cache_s, self._clock = cache_s, clock
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._last = FlinkJobStatus(False, "not checked yet")

    def status(self) -> FlinkJobStatus:
        with self._lock:
            if self._clock() - self._checked_at >= self._cache_s:
                self._last = self._ask()
                self._checked_at = self._clock()
            return self._last

    def _ask(self) -> FlinkJobStatus:
        try:
            jobs = self._fetch()
        except (OSError, ValueError, KeyError) as exc:  # refused, timed out, or not Flink's answer
            return FlinkJobStatus(False, f"unreachable: {exc}")
        return FlinkJobStatus(*flink_job_state(jobs))

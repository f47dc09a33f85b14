"""Redis as the cache study drives it: eviction policy and maxmemory through CONFIG SET (restored at
the end), the answer-cache keys only (storage_service/cache.py names them `answer:<question_id>`),
INFO counters, and a shorter TTL applied from outside storage (TtlEnforcer).

Nothing here reads a cached answer: GET would count in keyspace_hits/misses, which the report
compares with the requests' own sources. SCAN, UNLINK, EXPIRE, INFO and MEMORY USAGE do not.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from typing import Any, cast

import redis
from experiments.stats import RedisCounters, maxmemory_correction

log = logging.getLogger(__name__)
ANSWER_PATTERN = "answer:*"  # storage_service.cache.AnswerCache._key
# The settings the study changes; their values before the run are put back at its end.
TOUCHED_CONFIG = ("maxmemory", "maxmemory-policy", "notify-keyspace-events")
# How often the study's own connections talk to Redis during a cell (under Redis' 2 s idle cut).
KEEP_HOT_S = 0.5


class RedisControl:
    def __init__(self, url: str) -> None:
        self.url = url
        # One connection for everything the study asks (the key counter's thread included): a second
        # one idling during a cell would have its buffers freed by Redis, changing used_memory.
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, single_connection_client=True)
        self.db = int(self.client.connection_pool.connection_kwargs.get("db", 0) or 0)
        self._saved: dict[str, str] | None = None

    def _info(self, section: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.client.info(section))

    # --- configuration -----------------------------------------------------------------------
    def save_config(self) -> dict[str, str]:
        """The values TOUCHED_CONFIG had before the study (restore_config puts them back)."""
        self._saved = {
            name: str(cast(dict[str, str], self.client.config_get(name)).get(name, "")) for name in TOUCHED_CONFIG
        }
        return dict(self._saved)

    def restore_config(self) -> None:
        if self._saved is None:
            return
        for name, value in self._saved.items():
            self.client.config_set(name, value)
        log.info("redis configuration restored: %s", self._saved)

    def config(self, *names: str) -> dict[str, str]:
        return {name: str(cast(dict[str, str], self.client.config_get(name)).get(name, "")) for name in names}

    def set_cache(self, policy: str, maxmemory_bytes: int) -> None:
        self.client.config_set("maxmemory-policy", policy)
        self.client.config_set("maxmemory", str(maxmemory_bytes))

    def unlimited(self) -> None:
        """No eviction pressure while the working set is measured: the original maxmemory."""
        if self._saved is not None:
            self.client.config_set("maxmemory", self._saved["maxmemory"])

    # --- keys --------------------------------------------------------------------------------
    def answer_keys(self) -> list[str]:
        return list(self.client.scan_iter(match=ANSWER_PATTERN, count=1000))

    def other_keys(self) -> int:
        """Keys that are not cached answers (the study never deletes those; allkeys-* may evict them)."""
        return int(cast(int, self.client.dbsize())) - len(self.answer_keys())

    def flush_answers(self) -> int:
        """Delete the cached answers only, never the whole database."""
        keys = self.answer_keys()
        for start in range(0, len(keys), 500):
            self.client.unlink(*keys[start : start + 500])
        return len(keys)

    def memory_usage_mean(self, keys: list[str]) -> float | None:
        sizes = [cast(int | None, self.client.memory_usage(k)) for k in keys]
        known = [s for s in sizes if s]
        return statistics.fmean(known) if known else None

    # --- INFO --------------------------------------------------------------------------------
    def counters(self) -> RedisCounters:
        info = self._info("stats")
        oom = self._info("errorstats").get("errorstat_OOM", {})
        return RedisCounters(
            int(info["keyspace_hits"]),
            int(info["keyspace_misses"]),
            int(info["evicted_keys"]),
            int(info["expired_keys"]),
            int(oom.get("count", 0)) if isinstance(oom, dict) else 0,
        )

    def memory_and_keys(self) -> tuple[int, int]:
        """used_memory and the number of keys (read while no traffic runs)."""
        return int(self._info("memory")["used_memory"]), int(cast(int, self.client.dbsize()))

    def memory_without_answers(self, entry_bytes: float, other_keys: int, samples: int = 5) -> int:
        """used_memory minus the cached answers (resident answers x their measured size): Redis' memory
        for everything else, read while the traffic's connections are in the state they are in during
        a cell (their buffers allocated). The median of a few readings: one reading can catch a
        connection's 16 KB buffer that is freed a moment later (too much room), the cell's OOM check
        corrects a reading that was too low (experiments.cache_study.run_cell)."""
        readings = []
        for _ in range(samples):
            used, keys = self.memory_and_keys()
            readings.append(used - max(0, keys - other_keys) * entry_bytes)
            time.sleep(0.02)
        return int(statistics.median(readings))

    def used_memory(self, samples: int = 5, gap_s: float = 0.05) -> int:
        """used_memory, the median of a few readings (client buffers make it wobble)."""
        readings = []
        for _ in range(samples):
            readings.append(int(self._info("memory")["used_memory"]))
            time.sleep(gap_s)
        return int(statistics.median(readings))

    def server(self) -> dict[str, Any]:
        info = self._info("server")
        return {"redis_version": info.get("redis_version"), "maxmemory_samples": self.config("maxmemory-samples")}


class KeyCounter:
    """Samples how many answers are resident while a cell runs (SCAN: no keyspace hit or miss) and,
    once `hold(target, maxmemory, entry_bytes)` was called, keeps Redis at `target` answers by moving
    maxmemory (stats.maxmemory_correction): Redis still decides which answer goes, by its policy."""

    def __init__(self, control: RedisControl, every_s: float = KEEP_HOT_S) -> None:
        self.control = control
        self.every_s = every_s
        self.samples: list[int] = []
        self.adjustments = 0
        self._target: tuple[int, int, float] | None = None  # answers, maxmemory, entry bytes
        self._evicted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="answer-key-counter")

    def hold(self, answers: int, maxmemory: int, entry_bytes: float) -> None:
        self.samples.clear()
        self.adjustments = 0
        self._evicted = self.control.counters().evicted_keys
        self._target = (answers, maxmemory, entry_bytes)

    def release(self) -> None:
        self._target = None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                held = len(self.control.answer_keys())
                self.samples.append(held)
                if self._target is not None:
                    self._steer(held)
            except redis.RedisError as exc:
                log.warning("could not count the answer keys: %s", exc)

    def _steer(self, held: int) -> None:
        assert self._target is not None
        answers, maxmemory, entry_bytes = self._target
        evicted = self.control.counters().evicted_keys
        change = maxmemory_correction(held, answers, entry_bytes, evicting=evicted > self._evicted)
        self._evicted = evicted
        if change:
            maxmemory += change
            self.control.client.config_set("maxmemory", str(maxmemory))
            self._target = (answers, maxmemory, entry_bytes)
            self.adjustments += 1

    @property
    def maxmemory(self) -> int | None:
        return self._target[1] if self._target is not None else None

    def __enter__(self) -> KeyCounter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class TtlEnforcer:
    """Gives every answer storage caches a TTL of `ttl_s` instead of storage's CACHE_TTL_S.

    Storage sets its TTL on each put (SET ... EX CACHE_TTL_S) and cannot change it without a restart.
    This subscribes to Redis' keyspace notifications for SET (`notify-keyspace-events E$`, restored
    at the end) and answers each new `answer:*` key with EXPIRE key ttl_s, within milliseconds of
    the put. The connection asks for CLIENT NO-TOUCH (Redis >= 7.2) so that EXPIRE does not count as
    an access for LRU/LFU; older servers do count it once per put (`touches` says so; the TTL study
    uses allkeys-lru, where that touch lands at the put's own time and changes nothing).
    """

    def __init__(self, control: RedisControl, ttl_s: int) -> None:
        self.control = control
        self.ttl_s = ttl_s
        self.applied = 0
        self.touches = True
        self._client = redis.Redis.from_url(control.url, decode_responses=True, single_connection_client=True)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._expirer = redis.Redis.from_url(control.url, decode_responses=True, single_connection_client=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ttl-enforcer")

    def _enable_notifications(self) -> None:
        flags = set(self.control.config("notify-keyspace-events")["notify-keyspace-events"])
        if "A" not in flags:
            flags |= {"$"}
        self.control.client.config_set("notify-keyspace-events", "".join(sorted(flags | {"E"})))

    def _run(self) -> None:
        last_ping = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_ping > KEEP_HOT_S:
                self._keep_hot()
                last_ping = time.monotonic()
            message = self._pubsub.get_message(timeout=0.2)
            if message and str(message.get("data", "")).startswith("answer:"):
                try:
                    self._expirer.expire(message["data"], self.ttl_s)
                    self.applied += 1
                except redis.RedisError as exc:
                    log.warning("could not apply the TTL: %s", exc)

    def _keep_hot(self) -> None:
        """Redis frees an idle (> 2 s) connection's 16 KB query buffer and allocates it again on its
        next command: at this cache's scale that swing alone would evict every answer. Both
        connections talk at least every KEEP_HOT_S, so their buffers stay as they were measured."""
        try:
            self._expirer.ping()
            self._pubsub.ping()
        except redis.RedisError as exc:
            log.warning("keep-alive ping failed: %s", exc)

    def __enter__(self) -> TtlEnforcer:
        self._enable_notifications()
        try:
            self._expirer.execute_command("CLIENT", "NO-TOUCH", "ON")
            self.touches = False
        except redis.ResponseError:
            self.touches = True  # Redis < 7.2
        self._pubsub.subscribe(f"__keyevent@{self.control.db}__:set")
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()
        self._expirer.close()

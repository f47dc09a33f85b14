"""The experiment matrix: a small TOML file (experiments/matrices/*.toml) expanded into cells.

A matrix holds one or more studies; each study is the cross product of its lists. Cache sizes are
counted in answers (an int) or as a share of the working set ("25%"), converted to Redis' maxmemory
at run time (experiments.redis_control.maxmemory_for). A TTL is seconds or "default" (storage's own
CACHE_TTL_S, left alone).
"""

from __future__ import annotations

import math
import tomllib
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MATRICES = Path(__file__).resolve().parent / "matrices"
DEFAULT_MATRIX = MATRICES / "quick.toml"
POPULARITIES = ("uniform", "zipf")
ARRIVALS = ("constant", "poisson", "burst")
# Redis' eviction policies (noeviction makes no sense for a cache that must stay smaller than its data).
POLICIES = (
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)
# --fast (CI, the scripted LLM): at most this many requests per cell and this long a warm-up wait.
FAST_MAX_REQUESTS = 60
FAST_MAX_WARMUP_S = 120.0


class MatrixError(ValueError):
    """The matrix file is not valid; the message says where."""


@dataclass(frozen=True)
class Popularity:
    kind: str  # uniform | zipf
    zipf_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Popularity:
        """ "uniform" or "zipf:S" (S the exponent, e.g. zipf:1.1)."""
        kind, _, s = str(text).partition(":")
        if kind == "uniform" and not s:
            return cls("uniform")
        if kind == "zipf":
            try:
                value = float(s)
            except ValueError:
                raise MatrixError(f"popularity {text!r}: write zipf:S with a number S, e.g. zipf:1.1") from None
            if value < 0:
                raise MatrixError(f"popularity {text!r}: the zipf exponent must not be negative")
            return cls("zipf", value)
        raise MatrixError(f"popularity {text!r}: choose uniform or zipf:S")

    @property
    def label(self) -> str:
        return f"zipf s={self.zipf_s:g}" if self.kind == "zipf" else "uniform"

    @property
    def slug(self) -> str:
        return f"zipf{self.zipf_s:g}" if self.kind == "zipf" else "uniform"


@dataclass(frozen=True)
class CacheSize:
    """A cache size in answers, absolute (`answers`) or as a share of the working set (`share`)."""

    answers: int | None = None
    share: float | None = None

    @classmethod
    def parse(cls, value: Any) -> CacheSize:
        if isinstance(value, bool):
            raise MatrixError(f"cache size {value!r}: an int (answers) or a share such as '25%'")
        if isinstance(value, int):
            if value < 1:
                raise MatrixError(f"cache size {value}: at least 1 answer")
            return cls(answers=value)
        if isinstance(value, str) and value.endswith("%"):
            try:
                share = float(value[:-1]) / 100
            except ValueError:
                raise MatrixError(f"cache size {value!r}: a share such as '25%'") from None
            if not 0 < share <= 1:
                raise MatrixError(f"cache size {value!r}: a share above 0% and at most 100%")
            return cls(share=share)
        raise MatrixError(f"cache size {value!r}: an int (answers) or a share such as '25%'")

    def answers_for(self, working_set: int) -> int:
        """The size in answers for a working set of `working_set` validated questions (at least 1)."""
        if self.answers is not None:
            return self.answers
        assert self.share is not None
        return max(1, round(self.share * working_set))

    @property
    def label(self) -> str:
        return str(self.answers) if self.answers is not None else f"{(self.share or 0) * 100:g}%"


@dataclass(frozen=True)
class Cell:
    study: str
    popularity: Popularity
    arrival: str
    policy: str
    cache_size: CacheSize
    ttl_s: int | None  # None: storage's own TTL (CACHE_TTL_S), untouched
    requests: int
    rate_per_s: float
    burst_size: int
    seed: int

    @property
    def cell_id(self) -> str:
        size = self.cache_size.label.replace("%", "pct")
        ttl = "default" if self.ttl_s is None else f"{self.ttl_s}s"
        return f"{self.study}-{self.popularity.slug}-{self.arrival}-{self.policy}-size{size}-ttl{ttl}"

    @property
    def traffic_seed(self) -> int:
        """The same for every policy, size and TTL of one traffic shape: policies are compared on the
        very same sequence of requests (paired comparison), not on different random draws."""
        key = f"{self.seed}|{self.popularity.slug}|{self.arrival}|{self.requests}|{self.rate_per_s}|{self.burst_size}"
        return zlib.crc32(key.encode())


@dataclass(frozen=True)
class Warmup:
    timeout_s: float = 600.0
    rate_per_s: float = 5.0
    reask: bool = False  # re-ask questions that already ended low_quality/failed (a new run each)


@dataclass(frozen=True)
class Matrix:
    name: str
    cells: list[Cell]
    warmup: Warmup
    dataset: str | None = None  # a CSV path (default: the sample)
    dataset_limit: int | None = None
    workers: int = 1  # requests in flight during a cell (experiments.cache_study.run_cell says why 1)
    raw: dict[str, Any] = field(default_factory=dict)  # the file as read, for config.json


def _list(study: dict[str, Any], key: str, where: str) -> list[Any]:
    value = study.get(key)
    if not isinstance(value, list) or not value:
        raise MatrixError(f"{where}: '{key}' must be a non-empty list")
    return value


def _ttl(value: Any, where: str) -> int | None:
    if value == "default":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise MatrixError(f'{where}: ttl {value!r}: seconds (an int >= 1) or "default"')


def _positive(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise MatrixError(f"{where}: '{key}' must be a positive number, not {value!r}")
    return float(value)


def expand_study(study: dict[str, Any], defaults: dict[str, Any], seed: int, index: int) -> list[Cell]:
    """Every combination of one study's lists, in a stable order (policy varies fastest)."""
    name = str(study.get("name") or f"study{index + 1}")
    where = f"study {name!r}"
    traffic = {**defaults, **{k: v for k, v in study.items() if k in ("requests", "rate_per_s", "burst_size")}}
    requests = int(_positive(traffic.get("requests", 200), "requests", where))
    rate = _positive(traffic.get("rate_per_s", 40), "rate_per_s", where)
    burst = int(_positive(traffic.get("burst_size", 10), "burst_size", where))
    popularities = [Popularity.parse(p) for p in _list(study, "popularity", where)]
    arrivals = _list(study, "arrivals", where)
    for arrival in arrivals:
        if arrival not in ARRIVALS:
            raise MatrixError(f"{where}: arrival {arrival!r}: choose from {ARRIVALS}")
    policies = _list(study, "policies", where)
    for policy in policies:
        if policy not in POLICIES:
            raise MatrixError(f"{where}: policy {policy!r}: choose from {POLICIES}")
    sizes = [CacheSize.parse(s) for s in _list(study, "cache_sizes", where)]
    ttls = [_ttl(t, where) for t in study.get("ttls_s", ["default"])]
    return [
        Cell(name, popularity, arrival, policy, size, ttl, requests, rate, burst, seed)
        for popularity in popularities
        for arrival in arrivals
        for size in sizes
        for ttl in ttls
        for policy in policies
    ]


def parse_matrix(data: dict[str, Any], name: str = "matrix") -> Matrix:
    studies = data.get("study")
    if not isinstance(studies, list) or not studies:
        raise MatrixError(f"{name}: at least one [[study]] table")
    seed = int(data.get("seed", 1))
    defaults = dict(data.get("traffic", {}))
    cells = [cell for i, study in enumerate(studies) for cell in expand_study(study, defaults, seed, i)]
    ids = [c.cell_id for c in cells]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise MatrixError(f"{name}: cells repeat: {duplicates} (give the studies different names)")
    warm = data.get("warmup", {})
    warmup = Warmup(
        timeout_s=_positive(warm.get("timeout_s", Warmup.timeout_s), "timeout_s", "[warmup]"),
        rate_per_s=_positive(warm.get("rate_per_s", Warmup.rate_per_s), "rate_per_s", "[warmup]"),
        reask=bool(warm.get("reask", False)),
    )
    dataset = data.get("dataset", {})
    limit = dataset.get("limit")
    return Matrix(
        name=str(data.get("name", name)),
        cells=cells,
        warmup=warmup,
        dataset=dataset.get("csv"),
        dataset_limit=int(limit) if limit is not None else None,
        workers=int(_positive(defaults.get("workers", 1), "workers", "[traffic]")),
        raw=data,
    )


def load_matrix(path: Path) -> Matrix:
    with Path(path).open("rb") as handle:
        try:
            data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise MatrixError(f"{path}: {exc}") from exc
    return parse_matrix(data, Path(path).stem)


def fast(matrix: Matrix) -> Matrix:
    """The CI form (--fast): fewer requests per cell and a shorter warm-up wait, same cells."""
    cells = [replace(c, requests=min(c.requests, FAST_MAX_REQUESTS)) for c in matrix.cells]
    warmup = replace(matrix.warmup, timeout_s=min(matrix.warmup.timeout_s, FAST_MAX_WARMUP_S))
    return replace(matrix, cells=cells, warmup=warmup)

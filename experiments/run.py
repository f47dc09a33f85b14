"""One experiment run against a stack: warm-up, cache cells, pipeline study, report. Redis'
configuration is put back at the end, also on Ctrl-C, SIGTERM or an error."""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import confluent_kafka

from common.dataset import SAMPLE_CSV, Question, first_questions, read_questions
from common.settings import PROJECT_ROOT, PipelineSettings
from experiments import cache_study, pipeline_study, report
from experiments.matrix import Matrix
from experiments.redis_control import RedisControl
from experiments.stats import percentile, policy_comparison
from scripts.platform.layout import Layout, masked, read_versions
from traffic_generator.generator import TrafficGenerator

# The warm-up asks new questions (answered 202 at once), many at a time; cells use the matrix's workers.
WARMUP_WORKERS = 16
PACKAGES = ("redis", "confluent-kafka", "psycopg", "matplotlib", "requests", "pydantic")


@dataclass(frozen=True)
class Endpoints:
    storage_url: str
    redis_url: str
    database_url: str
    kafka_bootstrap: str
    quality_threshold: float
    max_attempts: int

    @classmethod
    def of_stack(cls, name: str, env: Mapping[str, str]) -> Endpoints:
        """The stack's URLs and passwords as its own processes got them (scripts.platform.layout)."""
        layout = Layout(name, env)
        rules = PipelineSettings.from_env(env)
        return cls(
            layout.storage_url,
            layout.redis_url,
            layout.database_url,
            layout.kafka_bootstrap,
            rules.quality_threshold,
            rules.max_attempts,
        )


def git_commit() -> str:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
        return result.stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def versions(control: RedisControl) -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "packages": packages,
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka": read_versions().get("KAFKA_VERSION"),
        "redis": control.server(),
    }


def dataset(matrix: Matrix, csv: Path | None, limit: int | None) -> list[Question]:
    path = csv or (Path(matrix.dataset) if matrix.dataset else SAMPLE_CSV)
    limit = limit or matrix.dataset_limit
    return first_questions(path, limit) if limit else read_questions(path)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(
    matrix: Matrix,
    stack: str,
    env: Mapping[str, str],
    out_dir: Path,
    csv: Path | None = None,
    limit: int | None = None,
) -> Path:
    """Runs the matrix and writes the report; returns its folder."""
    started = time.monotonic()
    started_utc = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    folder = out_dir / started_utc
    (folder / "requests").mkdir(parents=True, exist_ok=False)
    endpoints = Endpoints.of_stack(stack, env)
    control = RedisControl(endpoints.redis_url)
    warmup_gen = TrafficGenerator(endpoints.storage_url, workers=WARMUP_WORKERS)
    gen = TrafficGenerator(endpoints.storage_url, workers=matrix.workers)
    questions = dataset(matrix, csv, limit)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    redis_before = control.save_config()
    try:
        other_keys = control.other_keys()
        warm = cache_study.warm_up(questions, warmup_gen, endpoints.database_url, matrix.warmup)
        warm.summary.write_requests_csv(folder / "requests" / "warmup.csv")
        if not warm.working_set:
            raise SystemExit("no question was validated in the warm-up: nothing to cache (see the stack's logs)")
        entry = cache_study.measure_entry_size(control, gen, warm.working_set, other_keys)
        print(f"[experiment] one cached answer costs {entry.bytes:.0f} bytes; {len(matrix.cells)} cells", flush=True)
        results = []
        for i, cell in enumerate(matrix.cells, start=1):
            result = cache_study.run_cell(cell, control, gen, warm.working_set, entry, other_keys)
            assert result.summary is not None
            result.summary.write_requests_csv(folder / "requests" / f"{cell.cell_id}.csv")
            row = result.row
            print(
                f"[experiment] cell {i}/{len(matrix.cells)} {cell.cell_id}: hit rate {report.fmt(row['hit_rate'])}, "
                f"evicted {row['evicted_keys']}, expired {row['expired_keys']}, p95 {report.fmt(row['p95_ms'], 1)} ms",
                flush=True,
            )
            results.append(result)
    finally:
        control.restore_config()
        signal.signal(signal.SIGTERM, previous)
    print("[experiment] pipeline study: reading PostgreSQL and Kafka", flush=True)
    pipeline = pipeline_study.study(
        endpoints.database_url,
        endpoints.kafka_bootstrap,
        warm.question_ids,
        endpoints.quality_threshold,
        endpoints.max_attempts,
    )
    cells = [r.row for r in results]
    latencies: dict[str, list[float]] = {"cache hit (200)": [], "database hit (200)": []}
    for r in results:
        for o in r.outcomes:
            if o.source == "cache":
                latencies["cache hit (200)"].append(o.latency_s * 1000)
            elif o.source == "database":
                latencies["database hit (200)"].append(o.latency_s * 1000)
    pending_ms = [o.latency_s * 1000 for o in warm.summary.outcomes if o.source == "pending"]
    latencies["new question (202 pending)"] = pending_ms
    report.write_csv(folder / "cells.csv", cells)
    report.write_csv(folder / "pipeline.csv", pipeline.rows)
    report.write_csv(
        folder / "threshold_sweep.csv",
        [{"threshold": t, "validated_share": share, "exact": exact} for t, share, exact in pipeline.sweep],
    )
    report.write_csv(folder / "topic_waits.csv", [{"topic": t, **w} for t, w in pipeline.waits.items()])
    info = report.RunInfo(
        folder=folder,
        matrix_name=matrix.name,
        stack=stack,
        started_utc=started_utc,
        runtime_s=time.monotonic() - started,
        cells=cells,
        comparison=policy_comparison(cells),
        latencies_ms=latencies,
        pipeline=pipeline,
        warmup={
            "questions": len(questions),
            "asked": warm.asked,
            "validated": len(warm.working_set),
            "elapsed_s": warm.elapsed_s,
            "final_statuses": dict(warm.summary.final_statuses),
            "pending_p50_ms": percentile(pending_ms, 50),
        },
        entry=asdict(entry),
        redis_before=redis_before,
        other_keys=other_keys,
    )
    doc = report.compose(info)
    (folder / "report.md").write_text(doc.markdown(), encoding="utf-8")
    (folder / "report.html").write_text(doc.html(folder, f"Experiments {started_utc}"), encoding="utf-8")
    report.write_json(
        folder / "config.json",
        {
            "matrix": matrix.raw,
            "matrix_name": matrix.name,
            "cells": [{"cell": c.cell_id, **asdict(c)} for c in matrix.cells],
            "stack": stack,
            "storage_url": endpoints.storage_url,
            "redis_url": masked(endpoints.redis_url),
            "kafka_bootstrap": endpoints.kafka_bootstrap,
            "quality_threshold": endpoints.quality_threshold,
            "max_attempts": endpoints.max_attempts,
            "dataset": {"csv": str(csv or matrix.dataset or SAMPLE_CSV), "questions": len(questions)},
            "warmup": info.warmup,
            "entry_size": info.entry,
            "redis_config_before": redis_before,
            "redis_config_after": control.config(*redis_before),
            "redis_other_keys": other_keys,
            "pipeline": pipeline.summary,
            "git_commit": git_commit(),
            "versions": versions(control),
            "runtime_s": info.runtime_s,
            "argv": sys.argv,
        },
    )
    print(f"[experiment] report: {folder / 'report.md'} ({info.runtime_s / 60:.1f} min)", flush=True)
    return folder

"""python -m benchmarks [--only scorer,llm,schema] [--out bench-results]

Measures on this machine: BERTScore pairs/s (one pair per call vs padded batches, 1 and 2 torch
threads), the embedded LLM's engines (llama.cpp and transformers on the same model: tokens/s, time to
first token, one and two requests in flight), and message schema round-trips/s. Writes JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def bench_schema() -> dict:
    from common.messages import PipelineMessage

    msg = PipelineMessage.new("What is the capital of Chile?", "The capital of Chile is Santiago.").evolve(
        llm_answer="Santiago is the capital of Chile." * 5
    )
    n = 5000
    seconds = timed(lambda: [PipelineMessage.from_bytes(msg.to_bytes()) for _ in range(n)])
    return {"round_trips_per_s": round(n / seconds)}


def bench_scorer() -> dict:
    import torch
    from bert_score import BERTScorer

    from score_validator.calibrate import load_labelled
    from score_validator.scorer import resolve_model

    rows = load_labelled()
    cands = [r["correct"] for r in rows] + [r["wrong"] for r in rows]
    refs = [r["reference"] for r in rows] * 2
    scorer = BERTScorer(model_type=resolve_model("all-MiniLM-L6-v2"), num_layers=6, lang="en", device="cpu")
    results: dict[str, float] = {"pairs": len(cands)}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        scorer.score(cands[:4], refs[:4], batch_size=1)  # warm-up
        for batch_size in (1, 16, 64):
            seconds = timed(lambda size=batch_size: scorer.score(cands, refs, batch_size=size), repeat=3)
            results[f"threads{threads}_batch{batch_size}_pairs_per_s"] = round(len(cands) / seconds, 1)
    return results


def bench_llm() -> dict:
    from benchmarks.local_llm_engines import bench_llm as engines

    return engines()


BENCHES = {"schema": bench_schema, "scorer": bench_scorer, "llm": bench_llm}


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks", description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    for name in args.only.split(","):
        print(f"[bench] {name} ...", flush=True)
        report[name] = BENCHES[name]()
        print(f"[bench] {name}: {report[name]}", flush=True)
    report["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    args.out.mkdir(exist_ok=True)
    stamp = report["when"].replace(":", "").replace("-", "")[:15]
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Benchmarks {report['when']}", "", f"machine: {report['machine']}", ""]
    for name in args.only.split(","):
        lines += [f"## {name}", ""] + [f"- {k}: {v}" for k, v in report[name].items()] + [""]
    (args.out / "latest.md").write_text("\n".join(lines))
    print(f"[bench] wrote {args.out}/bench-{stamp}.json and {args.out}/latest.md")


if __name__ == "__main__":
    main()

"""The report: PNG plots (matplotlib, Agg), report.md, a self-contained report.html (plots inlined
as base64) and the raw CSVs, in one folder."""

from __future__ import annotations

import base64
import csv
import html
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from experiments.pipeline_study import PipelineResult

# The figure the README shows (its "how to read it" is in the README text).
README_FIGURE = "hit_rate_by_policy.png"


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Plots. Each returns the file name it wrote, or None when the run has no data for it.


def save(fig: Any, folder: Path, name: str) -> str:
    """Every plot's last step: laid out, written as PNG into the report's folder, closed."""
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    return name


def _size_order(rows: list[dict[str, Any]]) -> list[str]:
    return [label for label, _ in sorted({(r["cache_size"], r["cache_answers"]) for r in rows}, key=lambda p: p[1])]


def plot_hit_rate_by_policy(cells: list[dict[str, Any]], folder: Path) -> str | None:
    """Grouped bars: hit rate per cache size (x) and policy (bars); one panel per popularity
    (columns) and arrival process (rows); cells with storage's own TTL of studies that compare
    policies only."""
    compared = {
        study for study in {r["study"] for r in cells} if len({r["policy"] for r in cells if r["study"] == study}) > 1
    }
    rows = [r for r in cells if r["ttl_s"] == "default" and r["hit_rate"] is not None and r["study"] in compared]
    if not rows:
        return None
    popularities = sorted({r["popularity"] for r in rows})
    arrivals = sorted({r["arrival"] for r in rows})
    policies = sorted({r["policy"] for r in rows})
    fig, axes = plt.subplots(
        len(arrivals), len(popularities), figsize=(5.5 * len(popularities), 3.8 * len(arrivals)), squeeze=False
    )
    width = 0.8 / len(policies)
    for i, arrival in enumerate(arrivals):
        for j, popularity in enumerate(popularities):
            ax = axes[i][j]
            panel = [r for r in rows if r["arrival"] == arrival and r["popularity"] == popularity]
            sizes = _size_order(panel)
            for k, policy in enumerate(policies):
                by_size = {r["cache_size"]: r for r in panel if r["policy"] == policy}
                xs = [i + (k - (len(policies) - 1) / 2) * width for i, s in enumerate(sizes) if s in by_size]
                values = [by_size[s]["hit_rate"] for s in sizes if s in by_size]
                bars = ax.bar(xs, values, width, label=policy, color=f"C{k}")
                ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
            working = panel[0]["working_set"]
            answers = {r["cache_size"]: r["cache_answers"] for r in panel}
            ax.set_xticks(range(len(sizes)), [f"{s}\n({answers[s]} of {working})" for s in sizes])
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{popularity}, {arrival} arrivals")
            ax.set_xlabel("cache size (answers of the working set)")
            ax.set_ylabel("hit rate")
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save(fig, folder, README_FIGURE)


def plot_hit_rate_vs_ttl(cells: list[dict[str, Any]], folder: Path) -> str | None:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in cells:
        groups[(r["study"], r["popularity"], r["arrival"], r["policy"], r["cache_size"])].append(r)
    series = {k: v for k, v in groups.items() if len({r["ttl_s"] for r in v}) > 1}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for (_study, popularity, arrival, policy, size), rows in series.items():
        timed = sorted((r for r in rows if r["ttl_s"] != "default"), key=lambda r: int(r["ttl_s"]))
        labels = [str(r["ttl_s"]) for r in timed] + (["default"] if any(r["ttl_s"] == "default" for r in rows) else [])
        ordered = timed + [r for r in rows if r["ttl_s"] == "default"]
        ax.plot(
            labels, [r["hit_rate"] for r in ordered], marker="o", label=f"{popularity}, {arrival}, {policy}, {size}"
        )
    ax.set_xlabel("answer TTL (s); default = storage's CACHE_TTL_S")
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, folder, "hit_rate_vs_ttl.png")


def plot_latency_cdf(latencies_ms: dict[str, list[float]], folder: Path) -> str | None:
    """Empirical CDF of POST /query latency per answer source."""
    present = {k: sorted(v) for k, v in latencies_ms.items() if v}
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in present.items():
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax.step(values, ys, where="post", label=f"{label} (n={len(values)})")
    ax.set_xscale("log")
    ax.set_xlabel("POST /query latency (ms, log scale)")
    ax.set_ylabel("share of requests at or below")
    ax.set_ylim(0, 1.02)
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", lw=0.6, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, folder, "latency_cdf.png")


def plot_threshold_sweep(pipeline: PipelineResult, folder: Path) -> str | None:
    if not pipeline.sweep or not pipeline.summary["terminal"]:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [t for t, _, _ in pipeline.sweep]
    ax.plot(xs, [s for _, s, _ in pipeline.sweep], color="tab:blue")
    exact = [(t, s) for t, s, e in pipeline.sweep if e]
    bound = [(t, s) for t, s, e in pipeline.sweep if not e]
    if exact:
        ax.plot(*zip(*exact, strict=True), "o", color="tab:blue", label="exact")
    if bound:
        ax.plot(
            *zip(*bound, strict=True),
            "o",
            mfc="white",
            color="tab:blue",
            label="lower bound (would have had more attempts)",
        )
    ax.axvline(pipeline.summary["quality_threshold"], color="tab:red", ls="--", label="the stack's QUALITY_THRESHOLD")
    ax.set_xlabel("quality threshold (F1)")
    ax.set_ylabel("validated share of the terminal questions")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, folder, "threshold_sweep.png")


def plot_regeneration(pipeline: PipelineResult, folder: Path) -> str | None:
    if not pipeline.regeneration:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = [i / 20 for i in range(-4, 21)]  # rescaled BERTScore can dip below 0
    ax.hist([f for _, f, _ in pipeline.regeneration], bins=bins, alpha=0.6, label="first attempt")
    ax.hist([b for _, _, b in pipeline.regeneration], bins=bins, alpha=0.6, label="best attempt")
    ax.axvline(pipeline.summary["quality_threshold"], color="tab:red", ls="--", label="threshold")
    ax.set_xlabel("F1 (BERTScore)")
    ax.set_ylabel("questions regenerated")
    ax.legend(fontsize=8)
    return save(fig, folder, "f1_regeneration.png")


def plot_topic_waits(pipeline: PipelineResult, folder: Path) -> str | None:
    waits = {t: w for t, w in pipeline.waits.items() if w["n"]}
    if not waits:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(waits) + 1.5))
    names = list(waits)
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [waits[n]["p50"] for n in names], 0.4, label="p50")
    ax.barh([y - 0.2 for y in ys], [waits[n]["p95"] for n in names], 0.4, label="p95")
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("seconds from a message in the topic to the question's next stage")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, folder, "topic_waits.png")


# ---------------------------------------------------------------------------------------------
# The document, written once and rendered as Markdown and as HTML.


@dataclass
class Document:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (headers, [[fmt(c) for c in row] for row in rows])))

    def image(self, name: str | None, caption: str) -> None:
        if name:
            self.blocks.append(("image", (name, caption)))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append(f"{'#' * value[0]} {value[1]}")
            elif kind == "para":
                out.append(value)
            elif kind == "table":
                headers, rows = value
                lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(row) + " |" for row in rows]
                out.append("\n".join(lines))
            elif kind == "image":
                out.append(f"![{value[1]}]({value[0]})\n\n*{value[1]}*")
        return "\n\n".join(out) + "\n"

    def html(self, folder: Path, title: str) -> str:
        out = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
            "img{max-width:100%}code{background:#f4f4f4}</style></head><body>",
        ]
        for kind, value in self.blocks:
            if kind == "heading":
                out.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "para":
                out.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                headers, rows = value
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
                out.append("</table>")
            elif kind == "image":
                data = base64.b64encode((folder / value[0]).read_bytes()).decode()
                out.append(
                    f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(value[1])}'>"
                    f"<figcaption>{html.escape(value[1])}</figcaption></figure>"
                )
        out.append("</body></html>")
        return "\n".join(out)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


@dataclass
class RunInfo:
    """Everything the report shows, gathered by experiments.run."""

    folder: Path
    matrix_name: str
    stack: str
    started_utc: str
    runtime_s: float
    cells: list[dict[str, Any]]
    comparison: list[dict[str, Any]]
    latencies_ms: dict[str, list[float]]
    pipeline: PipelineResult
    warmup: dict[str, Any]
    entry: dict[str, Any]
    redis_before: dict[str, str]
    other_keys: int
    notes: list[str] = field(default_factory=list)


def compose(info: RunInfo) -> Document:
    folder = info.folder
    doc = Document()
    doc.heading(f"Experiments: {info.matrix_name} matrix on stack '{info.stack}'", 1)
    doc.para(
        f"Started {info.started_utc} UTC; took {info.runtime_s / 60:.1f} min. Exact matrix, versions and commit: "
        "config.json. Raw data: cells.csv (one line per cell), requests/<cell>.csv (one line per request), "
        "pipeline.csv (one line per question)."
    )
    for note in info.notes:
        doc.para(note)

    doc.heading("Cache study")
    w, e = info.warmup, info.entry
    doc.para(
        f"Working set: the {w['validated']} validated questions of the dataset's {w['questions']} "
        f"(warm-up asked {w['asked']}, {w['elapsed_s']:.0f} s). Only those are requested in the cells, so every "
        "request is a cache hit or a database hit (a miss that storage then caches). Each cell starts with the "
        "answer cache emptied (only answer:* keys are deleted) and the same request sequence for every policy, "
        "size and TTL."
    )
    doc.para(
        f"Sizing: Redis evicts on memory, so a cache of N answers starts from maxmemory = B + N x {e['bytes']:.0f} "
        f"bytes. {e['bytes']:.0f} bytes is the measured mean cost of one cached answer: used_memory grew by "
        f"{fmt(e['from_used_memory'], 0)} bytes per answer when the {e['answers']} answers were cached (Redis' MEMORY "
        f"USAGE says {fmt(e['from_memory_usage'], 0)} bytes for value and key alone). B is Redis' memory without any "
        "answer, measured before each cell right after a few requests through storage. used_memory also counts client "
        "buffers (16 KB of query buffer for each connection that spoke in the last 2 s, and reply buffers Redis "
        "resizes), which move by a few KB: more than this whole cache. So each cell is calibrated: the cache is "
        "filled through storage with every answer of the working set and maxmemory moved by the missing or extra "
        "answers until Redis holds N (calibration_held in cells.csv: the answers held after each fill); then the "
        "answers are deleted and the cell runs from a cold cache, one request at a time ([traffic] workers = 1; "
        "arrival times still follow the distribution), while the study's own connections keep talking every 0.5 s "
        "and steer: if Redis holds more than N answers, maxmemory is lowered by the extra ones (Redis evicts them "
        "by its policy); if fewer while it is still evicting, raised (maxmemory_adjustments in cells.csv). "
        "resident_mean/resident_max in cells.csv are the answers Redis actually held during the cell (SCAN every "
        "0.5 s); compare policies at similar values. If Redis refused a put (over maxmemory with no answer left to "
        "evict: INFO errorstats' OOM count, column OOM), the cell is run again with 1 KB more room "
        "(sizing_attempts)."
    )
    doc.image(plot_hit_rate_by_policy(info.cells, folder), "Hit rate per Redis policy and cache size")
    if info.comparison:
        doc.heading("LFU vs LRU on the same traffic", 3)
        doc.table(
            [
                "popularity",
                "arrivals",
                "cache size",
                "TTL",
                "LFU hit rate",
                "LRU hit rate",
                "LFU - LRU (pp)",
                "answers held LFU / LRU (mean)",
            ],
            [
                [
                    r["popularity"],
                    r["arrival"],
                    r["cache_size"],
                    r["ttl_s"],
                    r["allkeys-lfu"],
                    r["allkeys-lru"],
                    r["difference_pp"],
                    f"{fmt(r['allkeys-lfu held'], 1)} / {fmt(r['allkeys-lru held'], 1)}",
                ]
                for r in info.comparison
            ],
        )
    doc.heading("Every cell", 3)
    doc.table(
        [
            "cell",
            "hit rate",
            "Redis hit rate",
            "hits",
            "misses",
            "evicted",
            "expired",
            "held (mean/max)",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "req/s",
        ],
        [
            [
                r["cell"],
                r["hit_rate"],
                r["redis_hit_rate"],
                r["hits"],
                r["misses"],
                r["evicted_keys"],
                r["expired_keys"],
                r.get("oom_rejections"),
                f"{fmt(r['resident_mean'], 1)}/{fmt(r['resident_max'])}",
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["throughput_rps"],
            ]
            for r in info.cells
        ],
    )
    doc.para(
        "hit rate: from the requests' own answers (source cache vs database). Redis hit rate: keyspace_hits / "
        "(hits + misses) from INFO stats before and after the cell (every POST /query does one GET); the two agree "
        "unless something else read Redis meanwhile. evicted/expired: INFO's evicted_keys and expired_keys deltas."
    )
    doc.image(plot_hit_rate_vs_ttl(info.cells, folder), "Hit rate against the answers' TTL")
    doc.para(
        "TTL: storage sets CACHE_TTL_S on every put and reads it only at start. A cell with a TTL subscribes to "
        "Redis keyspace notifications for SET and gives each new answer:* key that TTL with EXPIRE within "
        "milliseconds of the put (notify-keyspace-events is restored afterwards). On Redis < 7.2 that EXPIRE counts "
        "as one access of the key for LRU/LFU, so the TTL study uses allkeys-lru."
    )
    doc.image(plot_latency_cdf(info.latencies_ms, folder), "POST /query latency by answer source")

    p = info.pipeline
    s = p.summary
    doc.heading("Pipeline study")
    doc.para(
        f"The dataset's {s['questions']} questions, their current run: {s['terminal']} terminal "
        f"({', '.join(f'{k} {v}' for k, v in s['statuses'].items())}). QUALITY_THRESHOLD {s['quality_threshold']}, "
        f"MAX_ATTEMPTS {s['max_attempts']}. Kafka messages read: {s['kafka_messages']}"
        f"{'' if s['kafka_complete'] else ' (not every partition was read to its end: waits are partial)'}."
    )
    e2e = s["post_to_terminal_s"]
    doc.table(
        ["figure", "value"],
        [
            ["POST -> terminal p50 (s)", e2e["p50"]],
            ["POST -> terminal p95 (s)", e2e["p95"]],
            ["POST /query answer (202) p50 (ms)", w.get("pending_p50_ms")],
            ["terminal questions per minute", s["terminal_per_min"]],
            ["questions retried (overload/quota)", s["retried"]],
            ["recovered by retries (retried, then validated)", s["recovered_by_retries"]],
            ["questions regenerated (more than one scored attempt)", s["regenerated"]],
            ["... of which validated", s["regenerated_validated"]],
            [
                "mean F1 first attempt / best attempt (regenerated)",
                f"{fmt(s['mean_first_f1_regenerated'])} / {fmt(s['mean_best_f1_regenerated'])}",
            ],
            ["LLM calls (ledger)", s["llm_calls"]],
            ["LLM calls per question", s["llm_calls_per_question"]],
            ["extra LLM calls per question (beyond the first)", s["extra_llm_calls_per_question"]],
            ["... for regenerations / for retries", f"{s['regeneration_calls']} / {s['retry_calls']}"],
        ],
    )
    doc.heading("Wait per topic", 3)
    doc.table(
        ["topic", "messages", "mean s", "p50 s", "p95 s"],
        [[t, v["n"], v["mean"], v["p50"], v["p95"]] for t, v in p.waits.items()],
    )
    doc.para(
        "From the time a message was written to the next message of the same question and run "
        "(llm-requests, an audit copy written with the call's result, is left out); for a terminal topic, "
        "to storage applying the outcome (questions.completed_at). It includes the consumer's work: the LLM "
        "call for questions-pending, the scoring for llm-responses-success, the back-off for "
        "errors-overload/errors-quota. A message's time is the later of its Kafka timestamp and its own "
        "updated_at: Flink's Kafka sink stamps its outputs with the input record's timestamp, so only "
        "updated_at (set by the stage that built the message) dates the Flink job's outputs."
    )
    doc.image(plot_topic_waits(p, folder), "Wait per topic (p50, p95)")
    doc.heading("Threshold sweep", 3)
    doc.table(
        ["threshold", "validated share", "exact"],
        [[t, share, exact] for t, share, exact in p.sweep],
    )
    doc.para(
        "Each question's recorded attempt scores replayed through the pipeline's own rule (common.policy."
        "route_by_score) at each threshold. Exact at or below the stack's threshold; above it, a question that "
        "passed early would have had more attempts than were recorded, so the share is a lower bound (exact: no)."
    )
    doc.image(plot_threshold_sweep(p, folder), "Validated share if the threshold had been t")
    doc.image(plot_regeneration(p, folder), "F1 before (first attempt) and after regeneration (best attempt)")
    if info.other_keys:
        doc.para(f"Note: Redis held {info.other_keys} keys that are not answers; allkeys-* policies may evict them.")
    return doc

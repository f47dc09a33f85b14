// The dashboard page: builds one card per panel from GET /api/config, then polls the backend every
// few seconds and updates the charts in place (no reload). Each canvas carries data-points (how much
// it shows) and its card data-state (ok | empty | error), which the browser test reads.
"use strict";

const COLORS = ["#2e90fa", "#12b76a", "#f79009", "#f04438", "#7a5af8", "#0ba5ec", "#ee46bc", "#667085"];
const STATUS_COLORS = { validated: "#12b76a", low_quality: "#f79009", failed: "#f04438" };
const state = { config: null, charts: {}, minutes: 15, busy: false, timer: null };

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== "") node.textContent = text;
  return node;
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { ok: response.ok, status: response.status, body };
}

function colorFor(label, index) {
  for (const [status, color] of Object.entries(STATUS_COLORS)) {
    if (label.endsWith(status)) return color;
  }
  return COLORS[index % COLORS.length];
}

function clock(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

// A vertical dashed line at the quality threshold, on bar charts whose buckets are F1 ranges.
const thresholdLine = {
  id: "thresholdLine",
  afterDatasetsDraw(chart, _args, options) {
    const bounds = options.bounds || [];
    const threshold = options.value;
    if (threshold == null || bounds.length === 0) return;
    const k = bounds.findIndex((b) => b !== null && b >= threshold);
    if (k < 0) return;
    const lower = k === 0 ? 0 : bounds[k - 1];
    const fraction = bounds[k] > lower ? (threshold - lower) / (bounds[k] - lower) : 1;
    const x = chart.scales.x;
    const width = bounds.length > 1 ? Math.abs(x.getPixelForValue(1) - x.getPixelForValue(0)) : x.width;
    const px = x.getPixelForValue(k) - width / 2 + fraction * width;
    const ctx = chart.ctx;
    ctx.save();
    ctx.strokeStyle = "#b42318";
    ctx.setLineDash([5, 4]);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.moveTo(px, chart.chartArea.top);
    ctx.lineTo(px, chart.chartArea.bottom);
    ctx.stroke();
    ctx.fillStyle = "#b42318";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText(`threshold ${threshold}`, px + 4, chart.chartArea.top + 10);
    ctx.restore();
  },
};

function newChart(canvas, panel) {
  const common = {
    animation: false,
    maintainAspectRatio: false,
    plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
  };
  if (panel.kind === "histogram") {
    return new Chart(canvas, {
      type: "bar",
      data: { labels: [], datasets: [] },
      options: {
        ...common,
        plugins: {
          ...common.plugins,
          thresholdLine: { value: panel.threshold ? state.config.quality_threshold : null, bounds: [] },
        },
        scales: { y: { beginAtZero: true, title: { display: true, text: panel.unit } } },
      },
      plugins: [thresholdLine],
    });
  }
  return new Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      ...common,
      parsing: false,
      elements: { point: { radius: 0 }, line: { borderWidth: 2 } },
      scales: {
        x: { type: "linear", ticks: { callback: (value) => clock(value), maxTicksLimit: 7 } },
        y: { beginAtZero: true, title: { display: true, text: panel.unit } },
      },
    },
  });
}

function buildPanels() {
  const grid = document.getElementById("panels");
  for (const panel of state.config.panels) {
    const card = el("article", { class: "card", id: `panel-${panel.name}`, "data-state": "loading" });
    card.append(el("h3", {}, panel.title), el("p", { class: "help" }, panel.help));
    const plot = el("div", { class: "plot" });
    const canvas = el("canvas", { "data-panel": panel.name, "data-points": "0" });
    const overlay = el("div", { class: "overlay" }, "loading…");
    plot.append(canvas, overlay);
    card.append(plot);
    grid.append(card);
    state.charts[panel.name] = { panel, card, canvas, overlay, chart: newChart(canvas, panel) };
  }
}

function showState(entry, kind, message) {
  entry.card.dataset.state = kind;
  entry.overlay.textContent = message;
  entry.overlay.hidden = kind === "ok";
}

function draw(entry, body) {
  const chart = entry.chart;
  if (body.kind === "histogram") {
    chart.data.labels = body.labels;
    chart.data.datasets = body.series.map((s, i) => ({
      label: s.label, data: s.counts, backgroundColor: colorFor(s.label, i),
    }));
    chart.options.plugins.thresholdLine.bounds = body.bounds;
  } else {
    chart.data.datasets = body.series.map((s, i) => ({
      label: s.label,
      data: s.points.map(([t, v]) => ({ x: t * 1000, y: v })),
      borderColor: colorFor(s.label, i),
      backgroundColor: colorFor(s.label, i),
      spanGaps: false,
    }));
    chart.options.scales.x.min = body.start * 1000;
    chart.options.scales.x.max = body.end * 1000;
  }
  chart.update("none");
  entry.canvas.dataset.points = String(body.points);
  if (body.points > 0) showState(entry, "ok", "");
  else showState(entry, "empty", "no data yet");
}

async function refreshPanel(entry) {
  try {
    const { ok, body } = await getJson(`/api/panels/${entry.panel.name}?minutes=${state.minutes}`);
    if (ok) draw(entry, body);
    else showState(entry, "error", (body && body.message) || "the dashboard could not read this panel");
  } catch (_) {
    showState(entry, "error", "the dashboard does not answer");
  }
}

function renderBanner(status) {
  const banner = document.getElementById("banner");
  const lines = [];
  let severe = false;
  if (status === null) {
    lines.push("The dashboard itself does not answer: the data below is stale.");
    severe = true;
  } else if (!status.prometheus.reachable) {
    lines.push(`Prometheus at ${status.prometheus.url} is unreachable: charts are not updated (${status.prometheus.error}).`);
    severe = true;
  } else {
    if (status.targets.length === 0) lines.push("Prometheus has no scrape targets yet.");
    for (const t of status.down) lines.push(`DOWN: ${t.service || t.job} (${t.instance}) does not answer Prometheus' scrapes.`);
    for (const s of status.stalled) lines.push(`STALLED: ${s.service} has not polled Kafka for ${s.idle_s} s.`);
    if (status.flink_job_down) lines.push("STOPPED: the Flink score job is not RUNNING.");
    severe = status.down.length > 0 || status.flink_job_down;
  }
  banner.replaceChildren(...lines.map((line) => el("div", {}, line)));
  banner.hidden = lines.length === 0;
  banner.classList.toggle("warn", !severe);
}

async function refreshStatus() {
  try {
    const { ok, body } = await getJson("/api/status");
    const status = ok ? body : null;
    renderBanner(status);
    return status !== null && status.prometheus.reachable;
  } catch (_) {
    renderBanner(null);
    return false;
  }
}

function cell(text, cls = "") {
  return el("td", cls ? { class: cls } : {}, text == null ? "" : String(text));
}

function renderOutcomes(rows) {
  const tbody = document.querySelector("#outcomes tbody");
  tbody.replaceChildren(...rows.map((row) => {
    const tr = el("tr", { "data-question-id": row.question_id, title: row.question_id });
    tr.append(
      cell(row.question_text, "text"),
      cell(row.answer || row.error_kind || "", "text"),
      cell(row.score == null ? "" : row.score.toFixed(3), "num"),
      cell(row.status, `status-${row.status}`),
      cell(row.attempts, "num"),
      cell(row.completed_at ? clock(Date.parse(row.completed_at)) : "", "num"),
    );
    tr.addEventListener("click", () => traceQuestion(row.question_id));
    return tr;
  }));
  document.getElementById("outcomes-empty").hidden = rows.length > 0;
}

async function refreshOutcomes() {
  try {
    const { ok, body } = await getJson("/api/outcomes?limit=20");
    if (ok) renderOutcomes(body.outcomes);
  } catch (_) { /* the banner says the dashboard does not answer */ }
}

function seconds(value) {
  return value == null ? "" : `${value.toFixed(3)} s`;
}

async function traceQuestion(questionId) {
  const input = document.getElementById("trace-id");
  const note = document.getElementById("trace-note");
  const table = document.getElementById("trace");
  input.value = questionId;
  if (!/^[0-9a-f]{32}$/.test(questionId)) {
    note.textContent = "a question_id is 32 lowercase hex digits";
    note.className = "error";
    return;
  }
  note.textContent = "reading Kafka…";
  note.className = "muted";
  const { ok, body } = await getJson(`/api/trace/${questionId}`);
  if (!ok) {
    note.textContent = (body && body.message) || "trace failed";
    note.className = "error";
    table.hidden = true;
    return;
  }
  const events = body.events;
  note.textContent = `${events.length} events, status ${body.status}; ${body.scanned} records scanned`
    + (body.partial ? " (partial: time or record budget reached)" : "");
  table.dataset.questionId = questionId;
  table.querySelector("tbody").replaceChildren(...events.map((e, i) => {
    const tr = el("tr", { "data-topic": e.topic });
    tr.append(
      cell(i + 1, "num"),
      cell(new Date(e.time).toISOString().slice(11, 23), "num"),
      cell(seconds(e.since_previous_s), "num"),
      cell(seconds(e.since_first_s), "num"),
      cell(e.topic),
      cell(`${e.partition}/${e.offset}`, "num"),
      cell(e.run, "num"),
      cell(e.attempt, "num"),
      cell(e.retry_count, "num"),
      cell(e.status, `status-${e.status}`),
      cell(e.score == null ? "" : e.score.toFixed(3), "num"),
      cell(e.detail, "text"),
    );
    return tr;
  }));
  table.hidden = false;
}

async function refresh() {
  if (state.busy) return; // a slow answer: skip this turn rather than pile requests up
  state.busy = true;
  try {
    await refreshAll();
  } finally {
    state.busy = false;
  }
}

async function refreshAll() {
  const prometheusUp = await refreshStatus();
  const entries = Object.values(state.charts);
  if (prometheusUp) {
    await Promise.all(entries.map(refreshPanel));
  } else {
    // Asking for each panel would only fail the same way; the overlays say why the charts stand still.
    for (const entry of entries) showState(entry, "error", "Prometheus is unreachable");
  }
  await refreshOutcomes();
  document.getElementById("refreshed").textContent =
    `updated ${clock(Date.now())} UTC · every ${state.config.refresh_s} s`;
}

async function start() {
  const { ok, body } = await getJson("/api/config");
  if (!ok) {
    renderBanner(null);
    return;
  }
  state.config = body;
  const select = document.getElementById("range");
  for (const minutes of body.range_minutes) {
    const option = el("option", { value: String(minutes) }, minutes < 60 ? `${minutes} min` : `${minutes / 60} h`);
    if (minutes === state.minutes) option.selected = true;
    select.append(option);
  }
  select.addEventListener("change", () => {
    state.minutes = Number(select.value);
    refresh();
  });
  document.getElementById("trace-form").addEventListener("submit", (event) => {
    event.preventDefault();
    traceQuestion(document.getElementById("trace-id").value.trim());
  });
  buildPanels();
  await refresh();
  state.timer = setInterval(refresh, body.refresh_s * 1000);
}

if (typeof Chart === "undefined") {
  document.getElementById("refreshed").textContent = "Chart.js is missing: run npm ci --prefix dashboard";
} else {
  start();
}

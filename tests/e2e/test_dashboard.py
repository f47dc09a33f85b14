"""The dashboard (:8090) in a real headless Chromium (Debian's `chromium`, driven by Playwright; no
browser is downloaded): it loads with no console error, its charts fill with the questions that flow
while it is open (no reload), the latest outcomes list them, and a question's trace shows its records
in pipeline order with the time between them. A stopped worker and a stopped Prometheus show as a
banner and as overlays on the charts, and clear once they are back.

Uses the stack's own dashboard when one answers on DASHBOARD_PORT, else starts `python -m dashboard`
with the stack's settings for the duration of this module. The screenshot goes to
.state/dashboard.png on every run, and to docs/dashboard.png too with DASHBOARD_SCREENSHOT=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from common import topics
from common.settings import StackSettings
from dashboard.panels import PANELS_BY_NAME
from tests.conftest import ROOT, STATE, supervisorctl, terminal, unique, wait_until
from tests.fake_ollama import Answer, Fail

REFERENCE = "The capital of Chile is Santiago."
GOOD = "Santiago is the capital of Chile."
BAD = "Bananas are a yellow fruit rich in potassium that grows in tropical countries."
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Every chart (the unit tests pin them to the list); each must show data once questions flowed.
PANELS = tuple(PANELS_BY_NAME)
# Scrapes every 5 s, the page refreshes every 5 s, rates need two scrapes: generous, still bounded.
CHART_WAIT_S = 120


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Debian's chromium is not installed; scripts/install.sh installs it")
    return found


def answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=3).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def dashboard(stack) -> Iterator[str]:
    settings = StackSettings.from_env(stack.env)
    url = f"http://localhost:{settings.dashboard_port}"
    if answers(url):  # the stack's own dashboard (a supervised program)
        yield url
        return
    env = {
        **stack.env,
        "DATABASE_URL": stack.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "DASHBOARD_PORT": str(settings.dashboard_port),
    }
    log = open(STATE / "test-dashboard.log", "wb")  # noqa: SIM115 - closed after the process ends
    process = subprocess.Popen([sys.executable, "-m", "dashboard"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_until(lambda: process.poll() is None and answers(url), 60, interval_s=0.5, what="the dashboard")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@dataclass
class Tab:
    page: Any
    problems: list[str] = field(default_factory=list)  # console errors and uncaught exceptions


@pytest.fixture
def tab(tmp_path) -> Iterator[Tab]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile every run
            executable_path=chromium(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            opened = Tab(context.new_page())
            opened.page.on("console", lambda m: m.type == "error" and opened.problems.append(f"console: {m.text}"))
            opened.page.on("pageerror", lambda e: opened.problems.append(f"page error: {e}"))
            yield opened
        finally:
            context.close()


def points(page, panel: str) -> int:
    return int(page.get_attribute(f'canvas[data-panel="{panel}"]', "data-points") or 0)


def states(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        "article.card", "cards => Object.fromEntries(cards.map(c => [c.id.slice(6), c.dataset.state]))"
    )


def wait_on_page(page, check, timeout_s: float, what: str, *, until: bool = True):
    """Poll `check` (reading the page over the DevTools protocol) until it is truthy, or with
    until=False falsy; returns its last value. Not wait_for_function: that evaluates a string in the
    page, which the dashboard's Content-Security-Policy (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout_s
    while bool(value := check()) is not until and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    if until and not value:
        pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
    return value


def save_screenshot(page) -> Path:
    shot = STATE / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("DASHBOARD_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
    return shot


def test_the_open_page_fills_with_the_questions_that_flow(stack, fake_llm, ask, status_of, dashboard, tab):
    page = tab.page
    page.goto(dashboard)
    page.wait_for_selector('canvas[data-panel="f1"]')
    wait_on_page(page, lambda: page.inner_text("#refreshed").startswith("updated"), 30, "the first refresh")
    before = {panel: points(page, panel) for panel in PANELS}

    # One question per path the charts show: first-attempt success, a regeneration, an overload retry.
    # Each waits for its outcome and the next scrape, so every counter moves across scrapes (a rate
    # needs two samples) and the page must redraw with new data on its own.
    scripts = [
        (Answer(GOOD),),
        (Answer(BAD), Answer(GOOD)),
        (Fail(503), Answer(GOOD)),
    ]
    asked = []
    for script in scripts:
        question = unique("What is the capital of Chile?")
        fake_llm.script(question, *script)
        f1_before = points(page, "f1")
        qid = ask(question, REFERENCE).json()["question_id"]
        assert terminal(status_of, qid, timeout_s=180)["status"] == "validated"
        asked.append(qid)
        wait_on_page(page, lambda n=f1_before: points(page, "f1") > n, CHART_WAIT_S, f"the F1 chart to count {qid}")

    empty = wait_on_page(page, lambda: [p for p in PANELS if points(page, p) == 0], CHART_WAIT_S, "", until=False)
    assert not empty, f"charts with no data: {empty}; card states: {states(page)}"
    assert points(page, "f1") >= before["f1"] + 4  # 1 + 2 + 1 scored attempts, drawn without a reload
    assert set(states(page).values()) == {"ok"}, states(page)

    # The latest outcomes (PostgreSQL) list the questions; a click traces one.
    first = asked[0]
    outcome_row = f'#outcomes tr[data-question-id="{first}"]'
    page.wait_for_selector(outcome_row, timeout=30_000)
    page.click(outcome_row)
    page.wait_for_selector("#trace tbody tr", timeout=30_000)
    assert page.get_attribute("#trace", "data-question-id") == first
    trace = page.eval_on_selector_all(
        "#trace tbody tr", "rows => rows.map(r => [r.dataset.topic, ...[...r.cells].map(c => c.textContent)])"
    )
    order = [row[0] for row in trace]
    pending = order.index(topics.QUESTIONS_PENDING)
    assert pending < order.index(topics.LLM_RESPONSES_SUCCESS) < order.index(topics.VALIDATED_RESPONSES), order
    assert topics.LLM_REQUESTS in order
    assert all(row[3].endswith(" s") for row in trace[1:]), trace  # +prev: the time since the event before
    since_first = [float(row[4].removesuffix(" s")) for row in trace]
    assert since_first == sorted(since_first) and since_first[-1] > 0, trace

    save_screenshot(page)
    assert page.is_hidden("#banner") or "DOWN" not in page.inner_text("#banner"), page.inner_text("#banner")
    assert tab.problems == []


def banner(page) -> str:
    return "" if page.is_hidden("#banner") else page.inner_text("#banner")


def status(dashboard: str) -> dict:
    return requests.get(f"{dashboard}/api/status", timeout=15).json()


def test_a_stopped_stage_and_a_stopped_prometheus_are_obvious(stack, dashboard, tab):
    page = tab.page
    page.goto(dashboard)
    wait_on_page(page, lambda: page.inner_text("#refreshed").startswith("updated"), 30, "the first refresh")
    worker = "retry-quota-consumer"
    supervisorctl("stop", worker)
    try:
        # A scrape fails (every 5 s), Prometheus marks the target down, the page's next refresh says so.
        wait_on_page(page, lambda: f"DOWN: {worker}" in banner(page), 60, f"the banner to name {worker} down")
    finally:
        supervisorctl("start", worker)
    wait_until(lambda: not status(dashboard)["down"], 60, interval_s=1, what=f"{worker} scraped again")

    supervisorctl("stop", "prometheus")
    try:
        wait_on_page(page, lambda: "unreachable" in banner(page), 30, "the banner to say Prometheus is unreachable")
        wait_on_page(
            page, lambda: set(states(page).values()) == {"error"}, 30, "every chart to say why it stands still"
        )
        assert "Prometheus is unreachable" in page.inner_text("#panel-f1 .overlay")
    finally:
        supervisorctl("start", "prometheus")
    wait_until(lambda: status(dashboard)["prometheus"]["reachable"], 60, interval_s=1, what="Prometheus back")
    wait_on_page(page, lambda: "unreachable" not in banner(page), 30, "the banner to clear")
    assert tab.problems == []


def test_the_api_answers_bad_input_with_json_4xx(dashboard):
    for path, status in [
        ("/api/trace/NOT-A-QUESTION", 400),
        (f"/api/trace/{'0' * 32}", 404),
        ("/api/panels/up", 404),
        ("/api/panels/questions?minutes=7", 400),
        ("/api/outcomes?limit=-1", 400),
    ]:
        resp = requests.get(f"{dashboard}{path}", timeout=15)
        assert resp.status_code == status, (path, resp.status_code, resp.text[:200])
        assert resp.headers["Content-Type"].startswith("application/json") and resp.json()["error"], path

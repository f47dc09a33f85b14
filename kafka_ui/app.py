"""GET / (topics, consumer lag), GET /topics/<name> (latest messages), and the same as JSON under /api."""

from __future__ import annotations

from datetime import UTC, datetime

from confluent_kafka import KafkaException
from flask import Flask, jsonify, render_template_string, request

from common import topics
from common.metrics import kafka_lag_collector
from common.web import ApiError, configure_json_api
from kafka_ui.browser import KafkaBrowser

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · yahoo-llm Kafka</title>
<meta http-equiv="refresh" content="10">
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
 table { border-collapse: collapse; margin-bottom: 2rem; }
 th, td { padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; } .lag { color: #b00; font-weight: bold; }
 pre { background: #f6f6f6; padding: .5rem; max-height: 16rem; overflow: auto; margin: 0; }
 a { color: #0645ad; }
</style></head><body>
<h1><a href="/">yahoo-llm Kafka</a>{% if topic %} / {{ topic }}{% endif %}</h1>
<p>Broker {{ bootstrap }} · refreshed every 10 s · <a href="/api/topics">JSON</a></p>
{% if topic is none %}
<h2>Topics</h2>
<table><tr><th>topic</th><th>partitions</th><th>messages</th></tr>
{% for t in topics %}<tr><td><a href="/topics/{{ t.name }}">{{ t.name }}</a></td>
<td class="num">{{ t.partitions }}</td><td class="num">{{ t.messages }}</td></tr>{% endfor %}
</table>
<h2>Consumer groups</h2>
<table><tr><th>group</th><th>topic</th><th>committed</th><th>end</th><th>lag</th></tr>
{% for g in lags %}<tr><td>{{ g.group }}</td><td>{{ g.topic }}</td><td class="num">{{ g.committed }}</td>
<td class="num">{{ g.end }}</td><td class="num {{ 'lag' if g.lag else '' }}">{{ g.lag }}</td></tr>{% endfor %}
</table>
{% else %}
<h2>Latest {{ records|length }} messages</h2>
<table><tr><th>time (UTC)</th><th>partition</th><th>offset</th><th>key</th><th>value</th></tr>
{% for r in records %}<tr><td>{{ when(r.timestamp_ms) }}</td><td class="num">{{ r.partition }}</td>
<td class="num">{{ r.offset }}</td><td>{{ r.key or "" }}</td><td><pre>{{ r.pretty_value() }}</pre></td></tr>
{% endfor %}
</table>
{% endif %}
</body></html>"""


def when(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def lag_metrics(browser: KafkaBrowser):
    """yahoo_kafka_consumer_lag and yahoo_kafka_consumer_group_members, read from the broker when
    Prometheus scrapes (each broker call bounded by the browser's timeout)."""
    # Only the pipeline's groups: every throwaway group of a tool or test would be a series of its own.
    return kafka_lag_collector(
        lambda: [
            (p.group, p.topic, p.partition, p.lag)
            for p in browser.partition_lags(browser.topics(), only=topics.PIPELINE_GROUPS)
        ],
        lambda: browser.group_members(only=topics.PIPELINE_GROUPS).items(),
    )


def create_app(browser: KafkaBrowser, max_limit: int = 200) -> Flask:
    app = Flask("kafka_ui")
    configure_json_api(app, metrics=[lag_metrics(browser)])

    def limit() -> int:
        try:
            value = int(request.args.get("limit", 20))
        except ValueError:
            raise ApiError(400, "invalid_limit", "'limit' must be a whole number") from None
        return max(1, min(value, max_limit))

    def latest(topic: str):
        try:
            return browser.latest(topic, limit())
        except KeyError:
            raise ApiError(404, "not_found", f"no topic {topic}") from None

    @app.errorhandler(KafkaException)
    def _kafka_down(exc: KafkaException):
        return jsonify(error="kafka_unavailable", message=str(exc)), 503

    @app.get("/")
    def index():
        topics = browser.topics()
        return render_template_string(
            PAGE, title="topics", topic=None, topics=topics, lags=browser.lags(topics), bootstrap=browser.bootstrap
        )

    @app.get("/topics/<topic>")
    def topic_page(topic: str):
        return render_template_string(
            PAGE, title=topic, topic=topic, records=latest(topic), when=when, bootstrap=browser.bootstrap
        )

    @app.get("/api/topics")
    def api_topics():
        topics = browser.topics()
        return jsonify(
            topics=[{"name": t.name, "partitions": t.partitions, "messages": t.messages} for t in topics],
            consumer_groups=[
                {"group": g.group, "topic": g.topic, "committed": g.committed, "end": g.end, "lag": g.lag}
                for g in browser.lags(topics)
            ],
        )

    @app.get("/api/topics/<topic>/messages")
    def api_messages(topic: str):
        return jsonify(
            messages=[
                {
                    "partition": r.partition,
                    "offset": r.offset,
                    "timestamp_ms": r.timestamp_ms,
                    "key": r.key,
                    "value": r.value,
                }
                for r in latest(topic)
            ]
        )

    @app.get("/health")
    def health():
        browser.admin.list_topics(timeout=3)
        return jsonify(status="healthy", service="kafka-ui")

    return app

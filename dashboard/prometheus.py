"""Prometheus' HTTP API (GET /api/v1/query and /api/v1/query_range), for the panels' fixed queries."""

from __future__ import annotations

from typing import Any

import requests


class PrometheusUnavailable(Exception):
    """Prometheus did not answer (down, refused, too slow, 5xx)."""


class PrometheusQueryError(Exception):
    """Prometheus answered, but refused the query: a bug in a panel's PromQL."""


class PrometheusClient:
    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s
        self.session = requests.Session()

    def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            response = self.session.get(f"{self.base_url}{path}", params=params, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise PrometheusUnavailable(f"{self.base_url}: {exc.__class__.__name__}") from exc
        if response.status_code >= 500 and response.status_code != 503:
            raise PrometheusUnavailable(f"{self.base_url}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusUnavailable(f"{self.base_url}: HTTP {response.status_code}, not JSON") from exc
        if body.get("status") != "success":
            # 503 with a body is Prometheus itself unable to answer now (still starting, overloaded).
            kind = PrometheusUnavailable if response.status_code == 503 else PrometheusQueryError
            raise kind(f"{body.get('errorType', 'error')}: {body.get('error', '')}"[:500])
        return body["data"]["result"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant vector at the current time."""
        return self._get("/api/v1/query", {"query": promql})

    def query_range(self, promql: str, start: float, end: float, step_s: int) -> list[dict[str, Any]]:
        return self._get("/api/v1/query_range", {"query": promql, "start": start, "end": end, "step": step_s})

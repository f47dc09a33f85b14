"""python -m dashboard   (DASHBOARD_PORT, default 8090)"""

from __future__ import annotations

from common.logging import configure_logging
from common.web import serve
from dashboard.config import DashboardSettings


def main() -> None:
    settings = DashboardSettings()
    configure_logging("dashboard", settings.log_level)

    def app_factory():
        from dashboard.app import create_app
        from dashboard.kafka_trace import KafkaTraceReader
        from dashboard.outcomes import OutcomeStore
        from dashboard.prometheus import PrometheusClient

        return create_app(
            settings,
            PrometheusClient(settings.prometheus_url, settings.prometheus_timeout_s),
            OutcomeStore(settings.database_url),
            KafkaTraceReader(
                settings.kafka_bootstrap_servers,
                timeout_s=settings.trace_timeout_s,
                max_records=settings.trace_max_records,
            ),
        )

    serve(app_factory, settings.dashboard_port, bind_host=settings.bind_host, threads=8, timeout_s=60)


if __name__ == "__main__":
    main()

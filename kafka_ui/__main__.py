"""python -m kafka_ui   (KAFKA_UI_PORT, default 8080)"""

from common.logging import configure_logging
from common.settings import ServiceSettings
from common.web import serve

if __name__ == "__main__":
    settings = ServiceSettings()
    configure_logging("kafka-ui", settings.log_level)

    def app_factory():
        from kafka_ui.app import create_app
        from kafka_ui.browser import KafkaBrowser

        return create_app(KafkaBrowser(settings.kafka_bootstrap_servers))

    serve(app_factory, settings.kafka_ui_port, bind_host=settings.bind_host, threads=4, timeout_s=30)

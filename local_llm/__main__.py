"""python -m local_llm   (serves on the port of OLLAMA_URL, 11434 by default)"""

from common.logging import configure_logging
from common.web import serve
from local_llm.config import LocalLLMSettings

if __name__ == "__main__":
    settings = LocalLLMSettings()
    configure_logging("local-llm", settings.log_level)

    def app_factory():
        from local_llm.app import create_app
        from local_llm.load import load_model

        return create_app(settings, load_model(settings))

    # Threads beyond the queue's capacity, so a full queue is answered 503 at once, not left waiting.
    serve(
        app_factory,
        settings.port,
        bind_host=settings.bind_host,
        threads=settings.ollama_num_parallel + settings.ollama_max_queue + 4,
        timeout_s=600,
    )

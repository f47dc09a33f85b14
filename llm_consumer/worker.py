from __future__ import annotations

import logging
import os
import socket

from common import topics
from common.kafka import ConfirmedProducer, StopFlag, run_consumer
from common.messages import LLMError, PipelineMessage
from common.policy import FAILURE_TOPICS, classify_llm_failure
from llm_consumer.clients import LLMFailure, OllamaClient, OpenAIClient, build_prompt
from llm_consumer.config import LLMConsumerSettings

log = logging.getLogger(__name__)


def llm_handler(client: OllamaClient | OpenAIClient):
    def handle(message: PipelineMessage, producer: ConfirmedProducer, _topic: str) -> None:
        context = {"question_id": message.question_id, "attempt": message.attempt, "retry_count": message.retry_count}
        body = client.request_body(build_prompt(message.question_text))
        producer.send(topics.LLM_REQUESTS, message.evolve(llm_request={"url": client.url, "body": body}))
        try:
            generation = client.generate(body)
        except LLMFailure as exc:
            kind = classify_llm_failure(exc.status, timed_out=exc.timed_out, unreachable=exc.unreachable)
            log.warning(
                "LLM call failed", extra={**context, "kind": kind.value, "status": exc.status, "error": str(exc)}
            )
            error = LLMError(status=exc.status, kind=kind.value, message=str(exc)[:500])
            producer.send(FAILURE_TOPICS[kind], message.evolve(error=error))
            return
        log.info("LLM answered", extra={**context, "latency_ms": round(generation.latency_ms)})
        producer.send(
            topics.LLM_RESPONSES_SUCCESS,
            message.evolve(
                llm_answer=generation.text, model=generation.model, llm_latency_ms=generation.latency_ms, error=None
            ),
        )

    return handle


def make_client(settings: LLMConsumerSettings) -> OllamaClient | OpenAIClient:
    if settings.llm_backend == "openai":
        return OpenAIClient(
            settings.openai_base_url,
            settings.llm_model,
            settings.llm_timeout_s,
            settings.llm_temperature,
            settings.llm_num_predict,
            settings.openai_api_key,
        )
    return OllamaClient(
        settings.ollama_url,
        settings.llm_model,
        settings.llm_timeout_s,
        {"temperature": settings.llm_temperature, "num_predict": settings.llm_num_predict},
    )


def run(settings: LLMConsumerSettings) -> None:
    client = make_client(settings)
    log.info("LLM backend", extra={"backend": settings.llm_backend, "url": client.url, "model": settings.llm_model})
    run_consumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=topics.GROUP_LLM_CONSUMER,
        client_id=settings.llm_consumer_id or f"llm-consumer-{socket.gethostname()}-{os.getpid()}",
        source_topics=[topics.QUESTIONS_PENDING],
        handler=llm_handler(client),
        stop=StopFlag().install(),
        liveness_file=settings.liveness_file,
    )

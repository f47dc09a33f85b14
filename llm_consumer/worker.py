from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

from common import metrics, topics
from common.kafka import ConsumerRunner, Output
from common.ledger import CallLedger, QuestionState, SkipReason, skip_reason
from common.messages import LLMError, PipelineMessage
from common.policy import FAILURE_TOPICS, classify_llm_failure
from llm_consumer.clients import LLMFailure, OllamaClient, OpenAIClient, build_prompt
from llm_consumer.config import LLMConsumerSettings

log = logging.getLogger(__name__)

STAGE = "llm-consumer"
SUCCESS = "success"  # the `kind` label of an answered call (failures carry their FailureKind)

# What the handler asks before a call: the question's state, or None when that cannot be known.
StateLookup = Callable[[PipelineMessage], QuestionState | None]


def llm_handler(client: OllamaClient | OpenAIClient, state_of: StateLookup = lambda _m: None):
    """questions-pending -> [(llm-requests, the request), (success or error topic, the result)].

    A message whose step was already answered, or whose question is already over, is skipped
    before the LLM call (common.ledger): it produces nothing and is committed.
    """

    def handle(message: PipelineMessage, _topic: str) -> list[Output]:
        context = {
            "question_id": message.question_id,
            "run": message.run,
            "attempt": message.attempt,
            "retry_count": message.retry_count,
        }
        reason = skip_reason(message, state_of(message))
        if reason is not None:
            log.info("skipped before the LLM call", extra={**context, "reason": reason.value})
            metrics.LLM_CALLS_SKIPPED.labels(reason.value).inc()
            return []
        body = client.request_body(build_prompt(message.question_text))
        request = (topics.LLM_REQUESTS, message.evolve(llm_request={"url": client.url, "body": body}))
        started = time.monotonic()
        try:
            generation = client.generate(body)
        except LLMFailure as exc:
            kind = classify_llm_failure(exc.status, timed_out=exc.timed_out, unreachable=exc.unreachable)
            metrics.observe_llm_call(kind.value, time.monotonic() - started)
            log.warning(
                "LLM call failed", extra={**context, "kind": kind.value, "status": exc.status, "error": str(exc)}
            )
            error = LLMError(status=exc.status, kind=kind.value, message=str(exc)[:500])
            return [request, (FAILURE_TOPICS[kind], message.evolve(error=error))]
        log.info("LLM answered", extra={**context, "latency_ms": round(generation.latency_ms)})
        metrics.observe_llm_call(
            SUCCESS, generation.latency_ms / 1000, generation.prompt_tokens, generation.completion_tokens
        )
        answered = message.evolve(
            llm_answer=generation.text, model=generation.model, llm_latency_ms=generation.latency_ms, error=None
        )
        return [request, (topics.LLM_RESPONSES_SUCCESS, answered)]

    return handle


def result_topic(outputs: Sequence[Output]) -> str | None:
    """Where the call's result went (the output that is not the audit copy on llm-requests)."""
    return next((topic for topic, _ in outputs if topic != topics.LLM_REQUESTS), None)


def mark_answered_after_delivery(ledger: CallLedger):
    """The runner's delivered hook: the step counts as answered once its result was acknowledged."""

    def on_delivered(message: PipelineMessage, outputs: Sequence[Output]) -> None:
        topic = result_topic(outputs)
        if topic is not None:
            ledger.mark_answered(message, topic)

    return on_delivered


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
    metrics.start_llm_consumer_series(reason.value for reason in SkipReason)
    metrics.serve_worker_metrics(settings)
    client = make_client(settings)
    client_id = settings.llm_consumer_id or f"llm-consumer-{socket.gethostname()}-{os.getpid()}"
    ledger = CallLedger(settings.database_url, consumer=client_id)
    log.info("LLM backend", extra={"backend": settings.llm_backend, "url": client.url, "model": settings.llm_model})
    try:
        ConsumerRunner.for_service(
            settings,
            group_id=topics.GROUP_LLM_CONSUMER,
            client_id=client_id,
            stage=STAGE,
            source_topics=[topics.QUESTIONS_PENDING],
            handler=llm_handler(client, ledger.state),
            on_delivered=mark_answered_after_delivery(ledger),
        ).run()
    finally:
        ledger.close()

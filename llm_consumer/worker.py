from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

from common import metrics, topics
from common.inflight import AimdLimiter
from common.inflight_runner import InFlightRunner
from common.kafka import ConsumerRunner, Output
from common.ledger import CallLedger, QuestionState, SkipReason, skip_reason
from common.messages import LLMError, PipelineMessage
from common.policy import FAILURE_TOPICS, FailureKind, classify_llm_failure
from llm_consumer.clients import LLMFailure, OllamaClient, OpenAIClient, build_prompt
from llm_consumer.config import LLMConsumerSettings

log = logging.getLogger(__name__)

STAGE = "llm-consumer"
SUCCESS = "success"  # the `kind` label of an answered call (failures carry their FailureKind)

# What the handler asks before a call: the question's state, or None when that cannot be known.
StateLookup = Callable[[PipelineMessage], QuestionState | None]


# Failures that mean "too much for the server": the adaptive limit shrinks on them.
CONGESTION = frozenset({FailureKind.OVERLOAD, FailureKind.QUOTA})


def limit_moved(before: int, after: int, why: str) -> None:
    """The adaptive limit's gauge, and a log line whenever it moves (what the dashboard's chart shows)."""
    metrics.LLM_CONCURRENCY_LIMIT.labels(STAGE).set(after)
    if after != before:
        log.info("LLM concurrency limit changed", extra={"from": before, "to": after, "why": why})


def llm_handler(
    client: OllamaClient | OpenAIClient,
    state_of: StateLookup = lambda _m: None,
    limiter: AimdLimiter | None = None,
):
    """questions-pending -> [(llm-requests, the request), (success or error topic, the result)].

    A message whose step was already answered, or whose question is already over, is skipped
    before the LLM call (common.ledger): it produces nothing and is committed. Each call's latency
    or overload feeds `limiter` (many calls in flight; safe from the runner's threads).
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
        ticket = limiter.start() if limiter is not None else None
        started = time.monotonic()
        try:
            generation = client.generate(body)
        except LLMFailure as exc:
            kind = classify_llm_failure(exc.status, timed_out=exc.timed_out, unreachable=exc.unreachable)
            metrics.observe_llm_call(kind.value, time.monotonic() - started)
            if limiter is not None and ticket is not None and kind in CONGESTION:
                before = limiter.limit
                limiter.overloaded(ticket)
                limit_moved(before, limiter.limit, f"LLM {kind.value}")
            log.warning(
                "LLM call failed",
                extra={
                    **context,
                    "kind": kind.value,
                    "status": exc.status,
                    "retry_after_s": exc.retry_after_s,
                    "error": str(exc),
                },
            )
            error = LLMError(
                status=exc.status, kind=kind.value, message=str(exc)[:500], retry_after_s=exc.retry_after_s
            )
            return [request, (FAILURE_TOPICS[kind], message.evolve(error=error))]
        if limiter is not None and ticket is not None:
            before = limiter.limit
            limiter.succeeded(ticket, time.monotonic() - started)
            limit_moved(before, limiter.limit, "latency" if limiter.limit < before else "clean window")
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
            connections=settings.llm_max_concurrency,
        )
    return OllamaClient(
        settings.ollama_url,
        settings.llm_model,
        settings.llm_timeout_s,
        {"temperature": settings.llm_temperature, "num_predict": settings.llm_num_predict},
        connections=settings.llm_max_concurrency,
    )


def run(settings: LLMConsumerSettings) -> None:
    metrics.start_llm_consumer_series(reason.value for reason in SkipReason)
    metrics.serve_worker_metrics(settings)
    client = make_client(settings)
    client_id = settings.llm_consumer_id or f"llm-consumer-{socket.gethostname()}-{os.getpid()}"
    ledger = CallLedger(settings.database_url, consumer=client_id)
    log.info("LLM backend", extra={"backend": settings.llm_backend, "url": client.url, "model": settings.llm_model})
    options: dict = {
        "group_id": topics.GROUP_LLM_CONSUMER,
        "client_id": client_id,
        "stage": STAGE,
        "source_topics": [topics.QUESTIONS_PENDING],
        "on_delivered": mark_answered_after_delivery(ledger),
    }
    ceiling = settings.llm_max_concurrency
    metrics.LLM_CONCURRENCY_LIMIT.labels(STAGE).set(1)
    try:
        if ceiling == 1:  # one call at a time: the runner every other consumer uses
            runner = ConsumerRunner.for_service(settings, handler=llm_handler(client, ledger.state), **options)
        else:
            limiter = AimdLimiter(ceiling)
            runner = InFlightRunner.for_service(
                settings,
                handler=llm_handler(client, ledger.state, limiter),
                max_in_flight=lambda: limiter.limit,
                max_workers=ceiling,
                drain_timeout_s=drain_timeout_s(settings.llm_timeout_s),
                **options,
            )
        runner.run()
    finally:
        ledger.close()


def drain_timeout_s(llm_timeout_s: float) -> float:
    """SIGTERM: how long calls in flight may finish. Within the stop grace (LLM_TIMEOUT_S + 30 s,
    scripts/platform/processes.py), leaving time to produce, commit and close."""
    return llm_timeout_s + DRAIN_MARGIN_S


# A call may take its connect timeout (5 s) plus LLM_TIMEOUT_S; 10 s of the grace remain after.
DRAIN_MARGIN_S = 20.0

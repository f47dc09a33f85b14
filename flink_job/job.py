"""Flink Score Validator Job.

llm-responses-success -> BERTScore (score_validator, asynchronous, bounded retries) ->
    F1 >= QUALITY_THRESHOLD            -> validated-responses
    below, attempt < MAX_ATTEMPTS      -> questions-pending (attempt + 1: regenerate)
    below, attempt == MAX_ATTEMPTS     -> low-quality-responses
    not a valid message                -> dead-letter

Delivery: the Kafka source starts from the group's committed offsets (earliest the first time) and
commits on checkpoints; the sink is at-least-once (flushed on every checkpoint). While the scorer is
down a record is retried with backoff; past SCORER_MAX_WAIT_S the task fails and Flink restarts it
from the last checkpoint, so nothing is dropped and no score is invented.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from pyflink.common import Row, Time, Types, WatermarkStrategy
from pyflink.common.serialization import SerializationSchema, SimpleStringSchema
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.datastream.async_data_stream import AsyncDataStream
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)
from pyflink.datastream.functions import AsyncFunction
from pyflink.java_gateway import get_gateway

from common import topics
from common.flink_rest import SCORE_JOB_NAME as JOB_NAME
from flink_job.config import JobSettings

OUTPUT_TYPE = Types.ROW_NAMED(["topic", "key", "value"], [Types.STRING(), Types.STRING(), Types.STRING()])

log = logging.getLogger("flink_job")


class PermanentScoringError(Exception):
    """The scorer refused this input (4xx): retrying cannot help, the record goes to dead-letter."""


class ScoreAndRoute(AsyncFunction):
    """Scores one answer against its reference and decides where the message goes next."""

    def __init__(self, settings: JobSettings) -> None:
        self.url = settings.score_validator_url.rstrip("/") + "/score"
        self.threshold = settings.quality_threshold
        self.max_attempts = settings.max_attempts
        self.request_timeout_s = settings.scorer_request_timeout_s
        self.max_wait_s = settings.scorer_max_wait_s
        self.max_chars = settings.scorer_max_text_chars

    async def async_invoke(self, raw: str) -> list[Row]:
        from common.messages import MessageError, PipelineMessage
        from common.policy import after_scoring

        try:
            message = PipelineMessage.from_bytes(raw.encode("utf-8"))
        except MessageError as exc:
            return [dead_letter_row(raw, None, f"unparseable: {exc}")]
        try:
            score = await self._score(message.llm_answer or "", message.original_answer)
        except PermanentScoringError as exc:
            return [dead_letter_row(raw, message.question_id, f"scorer refused: {exc}")]
        topic, out = after_scoring(message, score, self.threshold, self.max_attempts)
        return [Row(topic, out.question_id, out.to_bytes().decode("utf-8"))]

    async def _score(self, candidate: str, reference: str):
        """POST /score with exponential backoff on transient failures, up to max_wait_s in all."""
        import aiohttp

        from common.messages import Score

        payload = {"candidate": candidate[: self.max_chars], "reference": reference[: self.max_chars]}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        delay, last_error = 0.5, ""
        while True:
            try:
                # A client per call: async_invoke runs on another thread than open().
                timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.post(self.url, json=payload) as resp,
                ):
                    body = await resp.text()
                    if resp.status == 200:
                        return Score.model_validate_json(body)
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        raise PermanentScoringError(f"HTTP {resp.status}: {body[:300]}")
                    last_error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if loop.time() + delay > deadline:
                # Fail the task: Flink restarts it from the last checkpoint (backpressure, no loss).
                raise RuntimeError(f"score_validator unavailable for {self.max_wait_s}s: {last_error}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def timeout(self, value: str) -> list[Row]:
        raise TimeoutError("scoring did not finish in time; the task restarts from its last checkpoint")


def dead_letter_row(raw: str, key: str | None, reason: str) -> Row:
    envelope = {
        "schema_version": 1,
        "reason": reason,
        "source_topic": topics.LLM_RESPONSES_SUCCESS,
        "raw_text": raw,
        "stage": "flink_job",
    }
    return Row(topics.DEAD_LETTER, key, json.dumps(envelope, ensure_ascii=False))


def row_field_schema(index: int) -> SerializationSchema:
    """Field `index` of Row(topic, key, value) as UTF-8 (flink_job/java, installed into Flink's lib)."""
    return SerializationSchema(get_gateway().jvm.yahoollm.flink.RowFieldSerializationSchema(index))


def build_pipeline(env: StreamExecutionEnvironment, settings: JobSettings) -> None:
    source = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap_servers)
        .set_topics(topics.LLM_RESPONSES_SUCCESS)
        .set_group_id(topics.GROUP_FLINK)
        .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("commit.offsets.on.checkpoint", "true")
        .set_property("partition.discovery.interval.ms", "60000")
        .build()
    )
    answers = env.from_source(source, WatermarkStrategy.no_watermarks(), "llm-responses-success").uid("kafka-source")
    routed = (
        AsyncDataStream.unordered_wait(
            answers,
            ScoreAndRoute(settings),
            Time.seconds(int(settings.scorer_max_wait_s + 2 * settings.scorer_request_timeout_s)),
            capacity=settings.scorer_concurrency,
            output_type=OUTPUT_TYPE,
        )
        .name("score and route")
        .uid("score-and-route")
    )
    sink = (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap_servers)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic_selector(lambda row: row[0])
            .set_key_serialization_schema(row_field_schema(1))
            .set_value_serialization_schema(row_field_schema(2))
            .build()
        )
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .set_property("enable.idempotence", "true")
        .build()
    )
    routed.sink_to(sink).name("kafka sink").uid("kafka-sink")


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="flink_job", description=__doc__).parse_known_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    settings = JobSettings()
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(settings.flink_parallelism)
    env.enable_checkpointing(settings.flink_checkpoint_interval_ms, CheckpointingMode.AT_LEAST_ONCE)
    build_pipeline(env, settings)
    log.info(
        "submitting %s: threshold %s, max attempts %s, scorer %s",
        JOB_NAME,
        settings.quality_threshold,
        settings.max_attempts,
        settings.score_validator_url,
    )
    env.execute_async(JOB_NAME)


if __name__ == "__main__":
    main(sys.argv[1:])

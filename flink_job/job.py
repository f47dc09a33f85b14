"""Flink Score Validator Job.

llm-responses-success -> BERTScore (score_validator, asynchronous) ->
    F1 >= QUALITY_THRESHOLD            -> validated-responses
    below, attempt < MAX_ATTEMPTS      -> questions-pending (attempt + 1: regenerate)
    below, attempt == MAX_ATTEMPTS     -> low-quality-responses
    a null value, bytes that are not a message, an answer the scorer cannot score -> dead-letter

Delivery: the Kafka source starts from the group's committed offsets (earliest the first time), or
from the retained checkpoint the watchdog restores (flink_job/watchdog.py), and commits on
checkpoints; the sink is at-least-once (flushed on every checkpoint). While the scorer is down the
job waits with backoff (backpressure: nothing dropped, no score invented); a record the scorer
cannot score while it scores others goes to dead-letter after SCORER_RECORD_MAX_FAILURES tries
(flink_job/scoring.py tells the two apart).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pyflink.common import Configuration, Row, Time, Types, WatermarkStrategy
from pyflink.common.serialization import SerializationSchema
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
from pyflink.datastream.externalized_checkpoint_retention import ExternalizedCheckpointRetention
from pyflink.datastream.functions import AsyncFunction
from pyflink.java_gateway import get_gateway

from common import topics
from common.flink_rest import SCORE_JOB_NAME as JOB_NAME
from common.messages import MessageError, Score
from flink_job.config import JobSettings
from flink_job.scoring import (
    PROBE_PAIR,
    CallResult,
    Output,
    ScorerFailure,
    ScorerHealth,
    SourceRecord,
    Unscorable,
    classify_status,
    dead_letter_output,
    decode_message,
    decode_source_record,
    routed_output,
    score_until_judged,
)

OUTPUT_TYPE = Types.ROW_NAMED(["topic", "key", "value"], [Types.STRING(), Types.STRING(), Types.STRING()])

log = logging.getLogger("flink_job")

# Below the scorer's gunicorn keep-alive (2 s): the client drops an idle connection first.
SCORER_KEEPALIVE_S = 1.0


class ScoreAndRoute(AsyncFunction):
    """Scores one answer against its reference and decides where the message goes next.

    Never raises for a record: whatever a record holds, it ends routed or dead-lettered, so no
    record can fail the task and be met again after every restart.
    """

    def __init__(self, settings: JobSettings) -> None:
        self.url = settings.score_validator_url.rstrip("/") + "/score"
        self.threshold = settings.quality_threshold
        self.max_attempts = settings.max_attempts
        self.request_timeout_s = settings.scorer_request_timeout_s
        self.max_chars = settings.scorer_max_text_chars
        self.max_strikes = settings.scorer_record_max_failures
        self.max_backoff_s = settings.scorer_max_backoff_s
        self._health: ScorerHealth | None = None
        self._sessions: dict[object, object] = {}  # event loop -> its aiohttp session (_session)

    def open(self, runtime_context) -> None:
        self._health = ScorerHealth(self._probe)

    async def async_invoke(self, raw: str) -> list[Row]:
        record = decode_source_record(raw)
        try:
            output = await self._process(record)
        except Exception as exc:  # a case nobody foresaw: dead-letter the record, keep the stream going
            log.exception(
                "unexpected error; record dead-lettered (partition %s, offset %s)", record.partition, record.offset
            )
            output = dead_letter_output(record, f"unexpected error in the Flink job: {type(exc).__name__}: {exc}")
        return [Row(*output)]

    async def _process(self, record: SourceRecord) -> Output:
        try:
            message = decode_message(record)
        except MessageError as exc:
            return dead_letter_output(record, f"unparseable: {exc}")
        payload = {
            "candidate": (message.llm_answer or "")[: self.max_chars],
            "reference": message.original_answer[: self.max_chars],
        }
        if self._health is None:  # open() not called (a direct test): one state for this instance
            self._health = ScorerHealth(self._probe)
        result = await score_until_judged(
            lambda: self._call(payload),
            self._health,
            max_strikes=self.max_strikes,
            max_backoff_s=self.max_backoff_s,
            question_id=message.question_id,
        )
        if isinstance(result, Unscorable):
            return dead_letter_output(record, result.reason, message)
        return routed_output(message, result, self.threshold, self.max_attempts)

    def _session(self):
        """The event loop's keep-alive session to the scorer (made on first use: async_invoke runs on
        another thread than open(), and a session belongs to its loop). A session per call opened a
        TCP connection per pair, which cost this worker and the scorer's HTTP server CPU each time.
        Idle connections are dropped after SCORER_KEEPALIVE_S, before the scorer's gunicorn drops
        them (2 s): a request sent on a connection the server is closing would fail."""
        import asyncio

        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:  # type: ignore[attr-defined]
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                connector=aiohttp.TCPConnector(keepalive_timeout=SCORER_KEEPALIVE_S),
            )
            self._sessions[loop] = session
        return session

    async def _call(self, payload: dict) -> CallResult:
        """One POST /score; every outcome is a CallResult (a score, or a classified failure)."""
        import aiohttp

        try:
            async with self._session().post(self.url, json=payload) as resp:
                body = await resp.text()
                failure = classify_status(resp.status)
                if failure is not None:
                    return CallResult(failure=failure, detail=f"HTTP {resp.status}: {body[:300]}")
                return CallResult(score=Score.model_validate_json(body))
        except (TimeoutError, aiohttp.ClientError) as exc:
            return CallResult(failure=ScorerFailure.UNAVAILABLE, detail=f"{type(exc).__name__}: {exc}")
        except ValueError as exc:  # a 200 whose body is not a score: the scorer misbehaves
            return CallResult(failure=ScorerFailure.UNAVAILABLE, detail=f"not a score: {str(exc)[:300]}")

    async def _probe(self) -> bool:
        """Does the scorer score a pair that always scores? (Outage or unscorable record.)"""
        return (await self._call(dict(PROBE_PAIR))).score is not None

    def timeout(self, value: str) -> list[Row]:
        # Not reached: the operator has no timeout (0), since an outage is waited out, not failed.
        raise TimeoutError("scoring did not finish in time")


def row_field_schema(index: int) -> SerializationSchema:
    """Field `index` of Row(topic, key, value) as UTF-8 (flink_job/java, installed into Flink's lib)."""
    return SerializationSchema(get_gateway().jvm.yahoollm.flink.RowFieldSerializationSchema(index))


def build_pipeline(env: StreamExecutionEnvironment, settings: JobSettings) -> None:
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap_servers)
        .set_topics(topics.LLM_RESPONSES_SUCCESS)
        .set_group_id(topics.GROUP_FLINK)
        .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
        .set_property("commit.offsets.on.checkpoint", "true")
        .set_property("partition.discovery.interval.ms", "60000")
    )
    # The whole record as JSON with base64 bytes (flink_job/java): PyFlink's builder only offers
    # value-only deserializers, and SimpleStringSchema fails the task on a null value.
    builder._j_builder.setDeserializer(get_gateway().jvm.yahoollm.flink.RawRecordDeserializationSchema())
    answers = env.from_source(
        builder.build(), WatermarkStrategy.no_watermarks(), topics.LLM_RESPONSES_SUCCESS, type_info=Types.STRING()
    ).uid("kafka-source")
    routed = (
        AsyncDataStream.unordered_wait(
            answers,
            ScoreAndRoute(settings),
            Time.milliseconds(0),  # no timeout: an outage is waited out (flink_job/scoring.py)
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


def python_runtime_config(settings: JobSettings) -> Configuration:
    config = Configuration()
    config.set_integer("python.fn-execution.bundle.time", settings.flink_python_bundle_time_ms)
    return config


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="flink_job", description=__doc__).parse_known_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    settings = JobSettings()
    env = StreamExecutionEnvironment.get_execution_environment(python_runtime_config(settings))
    env.set_parallelism(settings.flink_parallelism)
    env.enable_checkpointing(settings.flink_checkpoint_interval_ms, CheckpointingMode.AT_LEAST_ONCE)
    # Kept when the job stops (JobManager lost, suspended, cancelled): the watchdog resubmits the
    # job from the latest one (flink_job/watchdog.py) and prunes the old ones.
    env.get_checkpoint_config().set_externalized_checkpoint_retention(
        ExternalizedCheckpointRetention.RETAIN_ON_CANCELLATION
    )
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

"""Backup scorer (from the seed): consumes llm-responses-success and routes like the Flink job.

Off unless SCORE_VALIDATOR_BACKUP_CONSUMER=true. When on, it is a standby: while the Flink job is
active (asked at FLINK_REST_URL, cached a few seconds) it only advances its own offsets, and it
scores and routes only while the job is not running. It shares the routing rule with the job
(common.policy.after_scoring), and storage writes are idempotent, so the hand-over window costs at
most a duplicate regeneration, never a lost answer.
"""

from __future__ import annotations

import logging

from common import metrics, topics
from common.flink_rest import ScoreJobWatch
from common.kafka import ConsumerRunner, Output
from common.messages import PipelineMessage
from common.policy import after_scoring
from score_validator.config import ScoreValidatorSettings
from score_validator.scorer import Pair, Scorer

log = logging.getLogger(__name__)

STAGE = "score-validator-backup"


def backup_handler(scorer: Scorer, watch: ScoreJobWatch, threshold: float, max_attempts: int):
    def handle(message: PipelineMessage, _topic: str) -> list[Output]:
        if watch.active():
            return []  # the Flink job routes this one; only the offset moves on
        [score] = scorer.score([Pair(message.llm_answer or "", message.original_answer)])
        topic, out = after_scoring(message, score, threshold, max_attempts)
        log.info(
            "scored by the backup consumer",
            extra={"question_id": message.question_id, "f1": score.f1, "routed_to": topic},
        )
        return [(topic, out)]

    return handle


def run_backup_consumer(settings: ScoreValidatorSettings) -> None:
    if not settings.score_validator_backup_consumer:
        log.info("backup consumer disabled (SCORE_VALIDATOR_BACKUP_CONSUMER is not true); exiting")
        return
    metrics.serve_worker_metrics(settings)
    # An unreachable Flink counts as "not active": the backup takes over.
    watch = ScoreJobWatch(settings.flink_rest_url, timeout_s=3, ttl_s=5)
    handler = backup_handler(Scorer(settings), watch, settings.quality_threshold, settings.max_attempts)
    ConsumerRunner.for_service(
        settings,
        group_id=topics.GROUP_SCORE_VALIDATOR_BACKUP,
        client_id=STAGE,
        stage=STAGE,
        source_topics=[topics.LLM_RESPONSES_SUCCESS],
        handler=handler,
    ).run()

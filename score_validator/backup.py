"""Backup scorer (from the seed): consumes llm-responses-success and routes like the Flink job.

Off unless SCORE_VALIDATOR_BACKUP_CONSUMER=true. When on, it is a standby: while the Flink job is
active (asked at FLINK_REST_URL, cached a few seconds) it only advances its own offsets, and it
scores and routes only while the job is not running. It shares the routing rule with the job
(common.policy.after_scoring), and storage writes are idempotent, so the hand-over window costs at
most a duplicate regeneration, never a lost answer.
"""

from __future__ import annotations

import logging
import time

from common import topics
from common.flink_rest import list_jobs, score_job_active
from common.kafka import ConsumerRunner, Output
from common.messages import PipelineMessage
from common.policy import after_scoring
from score_validator.config import ScoreValidatorSettings
from score_validator.scorer import Pair, Scorer

log = logging.getLogger(__name__)

STAGE = "score-validator-backup"


class FlinkJobWatch:
    """Is the Flink job active? An unreachable Flink counts as 'not active' (the backup takes over)."""

    def __init__(self, rest_url: str, ttl_s: float = 5.0, fetch=None, clock=time.monotonic) -> None:
        self.rest_url, self.ttl_s, self.clock = rest_url.rstrip("/"), ttl_s, clock
        self._fetch = fetch or (lambda: list_jobs(self.rest_url, timeout_s=3))
        self._checked_at, self._active = float("-inf"), False

    def active(self) -> bool:
        if self.clock() - self._checked_at >= self.ttl_s:
            try:
                self._active = score_job_active(self._fetch())
            except (OSError, ValueError, KeyError):
                self._active = False
            self._checked_at = self.clock()
        return self._active


def backup_handler(scorer: Scorer, watch: FlinkJobWatch, threshold: float, max_attempts: int):
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
    handler = backup_handler(
        Scorer(settings), FlinkJobWatch(settings.flink_rest_url), settings.quality_threshold, settings.max_attempts
    )
    ConsumerRunner.for_service(
        settings,
        group_id=topics.GROUP_SCORE_VALIDATOR_BACKUP,
        client_id=STAGE,
        stage=STAGE,
        source_topics=[topics.LLM_RESPONSES_SUCCESS],
        handler=handler,
    ).run()

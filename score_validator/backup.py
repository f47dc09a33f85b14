"""Backup scorer (from the seed): consumes llm-responses-success and routes like the Flink job.

Off unless SCORE_VALIDATOR_BACKUP_CONSUMER=true. It shares the routing rule with the Flink job
(common.policy.after_scoring) but not its consumer offsets, so run it only while the Flink job is
not running: both together would route every answer twice.
"""

from __future__ import annotations

import logging

from common import topics
from common.kafka import ConfirmedProducer, StopFlag, run_consumer
from common.messages import PipelineMessage
from common.policy import after_scoring
from score_validator.config import ScoreValidatorSettings
from score_validator.scorer import Pair, Scorer

log = logging.getLogger(__name__)


def run_backup_consumer(settings: ScoreValidatorSettings) -> None:
    if not settings.score_validator_backup_consumer:
        log.info("backup consumer disabled (SCORE_VALIDATOR_BACKUP_CONSUMER is not true); exiting")
        return
    scorer = Scorer(settings)

    def handle(message: PipelineMessage, producer: ConfirmedProducer, _topic: str) -> None:
        [score] = scorer.score([Pair(message.llm_answer or "", message.original_answer)])
        topic, out = after_scoring(message, score, settings.quality_threshold, settings.max_attempts)
        log.info("scored", extra={"question_id": message.question_id, "f1": score.f1, "routed_to": topic})
        producer.send(topic, out)

    run_consumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=topics.GROUP_SCORE_VALIDATOR_BACKUP,
        client_id="score-validator-backup",
        source_topics=[topics.LLM_RESPONSES_SUCCESS],
        handler=handle,
        stop=StopFlag().install(),
        liveness_file=settings.liveness_file,
    )

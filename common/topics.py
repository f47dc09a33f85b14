"""The one place that names Kafka topics, consumer groups and question statuses (DESIGN.md, "Topics")."""

from enum import StrEnum

QUESTIONS_PENDING = "questions-pending"
LLM_REQUESTS = "llm-requests"
LLM_RESPONSES_SUCCESS = "llm-responses-success"
LLM_RESPONSES_ERROR = "llm-responses-error"
ERRORS_OVERLOAD = "errors-overload"
ERRORS_QUOTA = "errors-quota"
VALIDATED_RESPONSES = "validated-responses"
LOW_QUALITY_RESPONSES = "low-quality-responses"
DEAD_LETTER = "dead-letter"

ALL_TOPICS = (
    QUESTIONS_PENDING,
    LLM_REQUESTS,
    LLM_RESPONSES_SUCCESS,
    LLM_RESPONSES_ERROR,
    ERRORS_OVERLOAD,
    ERRORS_QUOTA,
    VALIDATED_RESPONSES,
    LOW_QUALITY_RESPONSES,
    DEAD_LETTER,
)


class Status(StrEnum):
    """A question's status (PostgreSQL `questions.status`, `GET /status`)."""

    PENDING = "pending"
    VALIDATED = "validated"
    LOW_QUALITY = "low_quality"
    FAILED = "failed"


TERMINAL_STATUSES = frozenset({Status.VALIDATED, Status.LOW_QUALITY, Status.FAILED})
# Each outcome topic means one terminal status; dead-letter marks the question failed (with the reason).
TERMINAL_STATUS_BY_TOPIC = {
    VALIDATED_RESPONSES: Status.VALIDATED,
    LOW_QUALITY_RESPONSES: Status.LOW_QUALITY,
    LLM_RESPONSES_ERROR: Status.FAILED,
    DEAD_LETTER: Status.FAILED,
}

# Consumer groups, one per role, so replicas of a role share the work.
GROUP_LLM_CONSUMER = "llm-consumer"
GROUP_RETRY_OVERLOAD = "retry-overload-consumer"
GROUP_RETRY_QUOTA = "retry-quota-consumer"
GROUP_STORAGE = "storage-service"
GROUP_FLINK = "flink-score-validator"
GROUP_SCORE_VALIDATOR_BACKUP = "score-validator-backup"
# The pipeline's own consumer groups (tools and tests read topics under throwaway groups): the ones
# whose lag is exported to Prometheus and charted.
PIPELINE_GROUPS = (
    GROUP_LLM_CONSUMER,
    GROUP_RETRY_OVERLOAD,
    GROUP_RETRY_QUOTA,
    GROUP_STORAGE,
    GROUP_FLINK,
    GROUP_SCORE_VALIDATOR_BACKUP,
)

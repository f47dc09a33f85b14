"""The one place that names Kafka topics (DESIGN.md, "Topics")."""

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

# Consumer groups, one per role, so replicas of a role share the work.
GROUP_LLM_CONSUMER = "llm-consumer"
GROUP_RETRY_OVERLOAD = "retry-overload-consumer"
GROUP_RETRY_QUOTA = "retry-quota-consumer"
GROUP_STORAGE = "storage-service"
GROUP_FLINK = "flink-score-validator"
GROUP_SCORE_VALIDATOR_BACKUP = "score-validator-backup"

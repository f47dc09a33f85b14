-- yahoo-llm schema. Idempotent: applied on every start (native) or by the container's init (Docker).

CREATE TABLE IF NOT EXISTS questions (
    question_id      TEXT PRIMARY KEY,
    question_text    TEXT NOT NULL,
    original_answer  TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL CHECK (status IN ('pending', 'validated', 'low_quality', 'failed')),
    final_answer     TEXT,
    best_score       DOUBLE PRECISION,
    final_score      DOUBLE PRECISION,
    attempts         INTEGER NOT NULL DEFAULT 0,
    model            TEXT,
    error_kind       TEXT,
    error_message    TEXT,
    runs             INTEGER NOT NULL DEFAULT 1,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ
);
-- Terminal outcomes that arrived after the question's run had already ended (at-least-once
-- redelivery, a forked chain, a late dead letter): counted here, never applied. Across all runs.
ALTER TABLE questions ADD COLUMN IF NOT EXISTS duplicate_outcomes INTEGER NOT NULL DEFAULT 0;
-- Accesses: every 2xx answer of POST /query (cache, database or pending; the POST that created the
-- question is access 1), written in batches by storage_service.access. No index on access_count:
-- it would make every counted access a non-HOT update; the top-N query of /metrics scans instead.
ALTER TABLE questions ADD COLUMN IF NOT EXISTS access_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE questions ADD COLUMN IF NOT EXISTS last_accessed_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS questions_status_idx ON questions (status);
CREATE INDEX IF NOT EXISTS questions_updated_idx ON questions (updated_at);

-- Every scored answer, one row per (question, run, attempt); re-delivery updates the same row.
CREATE TABLE IF NOT EXISTS attempts (
    question_id  TEXT NOT NULL REFERENCES questions (question_id) ON DELETE CASCADE,
    run          INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    llm_answer   TEXT NOT NULL,
    precision    DOUBLE PRECISION NOT NULL,
    recall       DOUBLE PRECISION NOT NULL,
    f1           DOUBLE PRECISION NOT NULL,
    scored_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (question_id, run, attempt)
);

-- Failed pipeline runs (LLM errors, exhausted retries, dead letters); one row per (question, run).
-- kind 'dead_letter': a message of the run could not be processed; message = who gave up and why.
CREATE TABLE IF NOT EXISTS failures (
    question_id  TEXT NOT NULL REFERENCES questions (question_id) ON DELETE CASCADE,
    run          INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    retry_count  INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    status_code  INTEGER,
    message      TEXT NOT NULL DEFAULT '',
    failed_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (question_id, run)
);
-- A dead letter whose original message could not be read has no attempt or retry count to record.
ALTER TABLE failures ALTER COLUMN attempt DROP NOT NULL;
ALTER TABLE failures ALTER COLUMN retry_count DROP NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- LLM-call ledger (llm_consumer, common/ledger.py). One row per LLM call whose result was
-- acknowledged by Kafka, keyed like the call: a redelivered duplicate of an answered step is skipped
-- instead of starting a second chain. No foreign key: the ledger must never refuse a row because
-- storage has not committed the question yet.
CREATE TABLE IF NOT EXISTS llm_calls (
    question_id    TEXT NOT NULL,
    run            INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    retry_count    INTEGER NOT NULL,
    outcome_topic  TEXT NOT NULL,
    consumer       TEXT,
    answered_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (question_id, run, attempt, retry_count)
);
CREATE INDEX IF NOT EXISTS llm_calls_answered_idx ON llm_calls (answered_at);

"""What each chaos question asks of the pipeline: a script for the fake LLM, with the terminal status
and the number of LLM calls its chain needs when nothing is duplicated.

Every script keeps its expected status when a call is duplicated (a redelivery makes one call more,
which consumes the next scripted reply): the fake LLM repeats the last reply once a script is used up,
and each script ends in the reply that decides its outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from common.topics import Status
from tests.fake_ollama import Answer, Fail

QUESTION = "What is the capital of Chile?"
REFERENCE = "The capital of Chile is Santiago."
GOOD = Answer("Santiago is the capital of Chile.")
BAD = Answer("Bananas are a yellow fruit rich in potassium that grows in tropical countries.")
OVERLOAD, QUOTA, BROKEN = Fail(503), Fail(429), Fail(500)


@dataclass(frozen=True)
class Limits:
    """The pipeline's caps, as the test stack is configured (tests/conftest.py TEST_ENV)."""

    max_attempts: int
    overload_retries: int
    quota_retries: int

    @classmethod
    def from_env(cls, env: dict) -> Limits:
        return cls(
            max_attempts=int(env["MAX_ATTEMPTS"]),
            overload_retries=int(env["RETRY_OVERLOAD_MAX_RETRIES"]),
            quota_retries=int(env["RETRY_QUOTA_MAX_RETRIES"]),
        )


@dataclass(frozen=True)
class Chain:
    name: str
    replies: tuple
    expected: Status
    calls: int  # LLM calls the chain needs without any duplicate


def catalogue(limits: Limits) -> list[Chain]:
    """One chain per behaviour the pipeline promises; a fault's batch cycles through them."""
    overloads, quotas = (OVERLOAD,) * limits.overload_retries, (QUOTA,) * limits.quota_retries
    return [
        Chain("first-pass", (GOOD,), Status.VALIDATED, 1),
        Chain("regenerate-then-pass", (BAD, GOOD), Status.VALIDATED, 2),
        Chain("regenerate-to-cap", (BAD,), Status.LOW_QUALITY, limits.max_attempts),
        Chain("503-then-pass", (OVERLOAD, OVERLOAD, GOOD), Status.VALIDATED, 3),
        Chain("429-then-pass", (QUOTA, GOOD), Status.VALIDATED, 2),
        Chain("bad-503-429-pass", (BAD, OVERLOAD, QUOTA, GOOD), Status.VALIDATED, 4),
        # Each kind of retry has its own budget: all overload retries, then all quota retries, then an answer.
        Chain(
            "both-budgets-then-pass", (*overloads, *quotas, GOOD), Status.VALIDATED, len(overloads) + len(quotas) + 1
        ),
        Chain("500-permanent", (BROKEN,), Status.FAILED, 1),
        Chain("bad-then-500", (BAD, BROKEN), Status.FAILED, 2),
        Chain("503-exhausted", (OVERLOAD,), Status.FAILED, 1 + limits.overload_retries),
        Chain("429-exhausted", (QUOTA,), Status.FAILED, 1 + limits.quota_retries),
    ]


def slowed(chain: Chain, delay_s: float) -> Chain:
    """The same chain with every reply taking `delay_s` (below LLM_TIMEOUT_S): a crash lands mid-call."""
    return replace(chain, replies=tuple(replace(reply, delay_s=delay_s) for reply in chain.replies))


def holds_a_quota_retry(chain: Chain) -> bool:
    """Chains whose message waits, paused, in the quota retry consumer at some point."""
    return QUOTA in chain.replies


@dataclass(frozen=True)
class Question:
    fault: str
    chain: Chain
    marker: str
    text: str
    question_id: str = ""


def new_question(fault: str, chain: Chain) -> Question:
    marker = f"[chaos-{uuid.uuid4().hex[:12]}]"
    return Question(fault=fault, chain=chain, marker=marker, text=f"{QUESTION} {marker}")

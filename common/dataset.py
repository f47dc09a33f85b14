"""Yahoo Answers CSV rows (no header: class, title, content, best_answer), read by the traffic
generator and by the scorer's calibration alike.

The Kaggle `train.csv` has 1.4 million rows (~700 MB): `iter_questions` streams it row by row, and
`first_questions` / `sample_questions` keep only the rows asked for, never the whole file.
"""

from __future__ import annotations

import csv
import itertools
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The small sample written for this project; it lives beside the traffic generator that replays it.
SAMPLE_CSV = Path(__file__).resolve().parent.parent / "traffic_generator" / "data" / "sample.csv"

# Some best answers of the Kaggle file are longer than the csv module's default field limit (128 KiB).
MAX_FIELD_CHARS = min(sys.maxsize, 16 * 1024 * 1024)


@dataclass(frozen=True)
class Question:
    category: str
    question_text: str
    original_answer: str


def question_of(row: list[str]) -> Question | None:
    """A row with a title and a best answer; the content (question body) joins the title when present.
    The Kaggle file writes line breaks inside a field as the two characters backslash and n."""
    if len(row) < 4:
        return None
    category, title, content, best_answer = (cell.strip() for cell in row[:4])
    text = f"{title} {content}".strip() if content else title
    if not (text and best_answer):
        return None
    return Question(category, text.replace("\\n", " "), best_answer.replace("\\n", " "))


def iter_questions(path: Path) -> Iterator[Question]:
    """The usable rows of the file, one at a time (lazy: the file is read as the iterator advances)."""
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            question = question_of(row)
            if question is not None:
                yield question


def _non_empty(questions: list[Question], path: Path) -> list[Question]:
    if not questions:
        raise ValueError(f"{path}: no usable rows (expected: class, title, content, best_answer)")
    return questions


def read_questions(path: Path) -> list[Question]:
    """Every usable row (for small files such as the sample; see first_questions/sample_questions)."""
    return _non_empty(list(iter_questions(path)), path)


def first_questions(path: Path, limit: int) -> list[Question]:
    """The first `limit` usable rows; the rest of the file is never read."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return _non_empty(list(itertools.islice(iter_questions(path), limit)), path)


def sample_questions(path: Path, size: int, rng: random.Random) -> list[Question]:
    """A uniform random sample of `size` usable rows in one pass (reservoir sampling, algorithm R):
    only `size` questions are held at any time. Returned in file order, so a seed gives the same list."""
    if size < 1:
        raise ValueError("sample size must be at least 1")
    reservoir: list[tuple[int, Question]] = []
    for index, question in enumerate(iter_questions(path)):
        if index < size:
            reservoir.append((index, question))
        else:
            slot = rng.randint(0, index)  # keep this row with probability size / (index + 1)
            if slot < size:
                reservoir[slot] = (index, question)
    return _non_empty([question for _, question in sorted(reservoir, key=lambda pair: pair[0])], path)

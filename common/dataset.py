"""Yahoo Answers CSV rows (no header: class, title, content, best_answer), read by the traffic
generator and by the scorer's calibration alike."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# The small sample written for this project; it lives beside the traffic generator that replays it.
SAMPLE_CSV = Path(__file__).resolve().parent.parent / "traffic_generator" / "data" / "sample.csv"


@dataclass(frozen=True)
class Question:
    category: str
    question_text: str
    original_answer: str


def read_questions(path: Path) -> list[Question]:
    """Rows with a title and a best answer; the content (question body) joins the title when present."""
    questions = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if len(row) < 4:
                continue
            category, title, content, best_answer = (cell.strip() for cell in row[:4])
            text = f"{title} {content}".strip() if content else title
            if text and best_answer:
                questions.append(Question(category, text.replace("\\n", " "), best_answer.replace("\\n", " ")))
    if not questions:
        raise ValueError(f"{path}: no usable rows (expected: class, title, content, best_answer)")
    return questions

"""The scripted LLM's serving capacity (benchmarks/e2e.py): slots, and what happens beyond them."""

from __future__ import annotations

import threading

import pytest

from tests.fake_ollama import FakeOllama


def test_unbounded_by_default_as_the_tests_use_it():
    fake = FakeOllama()
    assert all(fake.take_slot() for _ in range(100))
    assert fake.peak_busy == 100 and fake.refused == 0


def test_beyond_its_slots_a_503_server_refuses_and_frees_a_slot_for_the_next_call():
    fake = FakeOllama()
    fake.serve_like(slots=2, overflow="503")
    assert [fake.take_slot() for _ in range(3)] == [True, True, False]
    assert fake.refused == 1
    fake.free_slot()
    assert fake.take_slot()
    assert fake.peak_busy == 2


def test_beyond_its_slots_a_queueing_server_makes_the_call_wait_for_a_free_slot():
    fake = FakeOllama()
    fake.serve_like(slots=1, overflow="queue")
    assert fake.take_slot()
    got = threading.Event()
    threading.Thread(target=lambda: fake.take_slot() and got.set(), daemon=True).start()
    assert not got.wait(0.1)  # queued behind the busy slot
    fake.free_slot()
    assert got.wait(10)
    assert fake.refused == 0 and fake.peak_busy == 1


def test_an_unknown_overflow_is_refused():
    with pytest.raises(ValueError, match="overflow"):
        FakeOllama().serve_like(overflow="drop")

"""The Flink job watchdog's pure decisions: when to submit, from which checkpoint, what to prune."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.flink_rest import MISSING, all_tasks_running, score_job, score_job_state
from flink_job.submit import flink_run_command
from flink_job.watchdog import (
    Action,
    Checkpoint,
    checkpoints_root,
    choose_restore_point,
    find_checkpoints,
    job_dirs_to_prune,
    next_action,
)

NAME = "Flink Score Validator Job"


@pytest.mark.parametrize(
    ("answers", "state", "action"),
    [
        (False, "unreachable: refused", Action.WAIT_FOR_JOBMANAGER),
        (True, "RUNNING", Action.WATCH),
        (True, "RESTARTING", Action.WATCH),
        (True, "INITIALIZING", Action.WATCH),
        (True, MISSING, Action.SUBMIT),
        (True, "FAILED", Action.SUBMIT),
        (True, "CANCELED", Action.SUBMIT),
        (True, "FINISHED", Action.SUBMIT),
    ],
)
def test_next_action(answers, state, action):
    assert next_action(answers, state) is action


def test_the_newest_checkpoint_not_rejected_is_chosen():
    old, new = Checkpoint(Path("a/chk-9"), 100.0), Checkpoint(Path("b/chk-2"), 200.0)
    assert choose_restore_point([old, new], set()) == new
    assert choose_restore_point([old, new], {new.path}) == old
    assert choose_restore_point([old, new], {old.path, new.path}) is None
    assert choose_restore_point([], set()) is None


def test_old_job_folders_are_pruned_the_recent_kept():
    dirs = {Path("j1"): 10.0, Path("j2"): 30.0, Path("j3"): 20.0, Path("j4"): 40.0}
    assert job_dirs_to_prune(dirs, keep=2) == [Path("j3"), Path("j1")]
    assert job_dirs_to_prune(dirs, keep=0) == [Path("j2"), Path("j3"), Path("j1")]  # never the newest


def test_only_completed_checkpoints_are_found(tmp_path):
    complete = tmp_path / "job1" / "chk-3"
    complete.mkdir(parents=True)
    (complete / "_metadata").write_bytes(b"x")
    os.utime(complete / "_metadata", (50, 50))
    (tmp_path / "job2" / "chk-4").mkdir(parents=True)  # in progress: no _metadata yet
    (tmp_path / "job2" / "shared").mkdir()
    assert find_checkpoints(tmp_path) == [Checkpoint(complete, 50.0)]
    assert find_checkpoints(None) == [] and find_checkpoints(tmp_path / "nope") == []
    assert checkpoints_root(f"file://{tmp_path}") == tmp_path and checkpoints_root(None) is None


def test_restoring_passes_the_checkpoint_to_flink_run(tmp_path):
    plain = flink_run_command("flink", "http://jm:8081", tmp_path / "deps.zip", None)
    restored = flink_run_command("flink", "http://jm:8081", tmp_path / "deps.zip", "/cp/j/chk-3")
    assert "--fromSavepoint" not in plain and "-Drest.address=jm" in plain
    assert restored[restored.index("--fromSavepoint") + 1] == "/cp/j/chk-3"
    assert "--allowNonRestoredState" in restored


def test_job_state_prefers_an_active_job_over_older_failed_ones():
    jobs = [
        {"jid": "a", "name": NAME, "state": "FAILED", "start-time": 5},
        {"jid": "b", "name": NAME, "state": "RUNNING", "start-time": 3, "tasks": {"total": 2, "running": 2}},
        {"jid": "c", "name": "other", "state": "RUNNING", "start-time": 9},
    ]
    assert score_job(jobs)["jid"] == "b" and score_job_state(jobs) == "RUNNING"
    assert score_job_state(jobs[:1]) == "FAILED"
    assert score_job_state(jobs[2:]) == MISSING


def test_all_tasks_running_needs_every_task():
    assert all_tasks_running({"state": "RUNNING", "tasks": {"total": 2, "running": 2}})
    assert not all_tasks_running({"state": "RUNNING", "tasks": {"total": 2, "running": 1}})
    assert not all_tasks_running({"state": "RUNNING", "tasks": {"total": 0, "running": 0}})

"""Keeps the Flink Score Validator Job deployed: a supervised, long-running process.

    python -m flink_job.watchdog            # watch forever (supervisord program / compose service)
    python -m flink_job.watchdog --check    # print the job's state; exit 0 only if it is active

Every WATCHDOG_INTERVAL_S it asks Flink's REST API for the job. When the JobManager does not answer it
waits for it; when the job is missing (a restarted JobManager without HA knows no jobs) or ended
(FAILED, CANCELED, ...), it submits it again (flink_job/submit.py): from the latest retained
checkpoint under FLINK_CHECKPOINTS_DIR when there is one, else from the consumer group's committed
offsets. A checkpoint the job fails to start from is not tried again. It never gives up, and logs
every resubmission. The job retains its checkpoints when it stops (job.py); the watchdog keeps the
folders of the last few jobs and removes older ones.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
import urllib.error
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from common import metrics
from common.flink_rest import ACTIVE_STATES, MISSING, list_jobs, score_job_state
from flink_job.config import WatchdogSettings
from flink_job.submit import SubmissionError, default_flink_bin, submit

log = logging.getLogger("flink_job.watchdog")
SERVICE = "flink-job-watchdog"

PRUNE_EVERY_S = 60.0


# ---------------------------------------------------------------------------------------------
# Pure decisions.


class Action(StrEnum):
    WAIT_FOR_JOBMANAGER = "wait_for_jobmanager"
    WATCH = "watch"  # the job is active: nothing to do
    SUBMIT = "submit"


def next_action(jobmanager_answers: bool, job_state: str) -> Action:
    """A missing or ended job is submitted again, whatever ended it: the watchdog never gives up."""
    if not jobmanager_answers:
        return Action.WAIT_FOR_JOBMANAGER
    if job_state in ACTIVE_STATES:
        return Action.WATCH
    return Action.SUBMIT


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # the chk-<n> folder, what `flink run --fromSavepoint` takes
    completed_at: float  # mtime of its _metadata, written last when the checkpoint completes


def choose_restore_point(checkpoints: list[Checkpoint], rejected: set[Path]) -> Checkpoint | None:
    """The newest completed checkpoint not known to fail; None: start from the committed offsets."""
    usable = [c for c in checkpoints if c.path not in rejected]
    return max(usable, key=lambda c: c.completed_at, default=None)


def job_dirs_to_prune(job_dirs: dict[Path, float], keep: int) -> list[Path]:
    """All but the `keep` most recently active job folders ({folder: last activity})."""
    newest_first = sorted(job_dirs, key=lambda d: job_dirs[d], reverse=True)
    return newest_first[max(keep, 1) :]


# ---------------------------------------------------------------------------------------------
# The checkpoint folder (<dir>/<job id>/chk-<n>/_metadata, Flink's layout).


def checkpoints_root(setting: str | None) -> Path | None:
    if not setting:
        return None
    return Path(setting.removeprefix("file://"))


def find_checkpoints(root: Path | None) -> list[Checkpoint]:
    if root is None or not root.is_dir():
        return []
    found = []
    for metadata in root.glob("*/chk-*/_metadata"):
        try:
            found.append(Checkpoint(metadata.parent, metadata.stat().st_mtime))
        except OSError:  # removed meanwhile (subsumed by a newer one)
            continue
    return found


def job_dir_activity(root: Path) -> dict[Path, float]:
    activity: dict[Path, float] = {}
    for job_dir in root.iterdir():
        if not job_dir.is_dir():
            continue
        times = [job_dir.stat().st_mtime] + [m.stat().st_mtime for m in job_dir.glob("chk-*/_metadata")]
        activity[job_dir] = max(times)
    return activity


def prune_checkpoints(root: Path | None, keep: int) -> None:
    if root is None or not root.is_dir():
        return
    try:
        for job_dir in job_dirs_to_prune(job_dir_activity(root), keep):
            shutil.rmtree(job_dir, ignore_errors=True)
            log.info("removed old checkpoints", extra={"folder": str(job_dir)})
    except OSError as exc:
        log.warning("could not prune checkpoints", extra={"error": str(exc)})


# ---------------------------------------------------------------------------------------------
# The loop.


class Watchdog:
    def __init__(self, settings: WatchdogSettings, flink_bin: str, log_file: Path | None = None) -> None:
        self.settings = settings
        self.rest_url = settings.flink_rest_url.rstrip("/")
        self.flink_bin = flink_bin
        self.log_file = log_file
        self.checkpoints = checkpoints_root(settings.flink_checkpoints_dir)
        self.rejected: set[Path] = set()
        self.last_state: str | None = None
        self.pruned_at = float("-inf")
        self.failed_submissions = 0

    def observe(self) -> tuple[bool, str]:
        try:
            return True, score_job_state(list_jobs(self.rest_url, timeout_s=3))
        except (OSError, ValueError, KeyError) as exc:
            return False, f"unreachable: {exc}"

    def tick(self) -> None:
        metrics.mark_poll(SERVICE)
        answers, state = self.observe()
        if state != self.last_state:
            log.info("job state: %s", state, extra={"job_state": state})
            self.last_state = state
        action = next_action(answers, state)
        if action is Action.WATCH:
            self.failed_submissions = 0
            if state == "RUNNING" and time.monotonic() - self.pruned_at > PRUNE_EVERY_S:
                prune_checkpoints(self.checkpoints, self.settings.watchdog_keep_checkpoint_jobs)
                self.pruned_at = time.monotonic()
        elif action is Action.SUBMIT:
            self.resubmit(state)

    def resubmit(self, state: str) -> None:
        restore = choose_restore_point(find_checkpoints(self.checkpoints), self.rejected)
        source = str(restore.path) if restore else "the committed offsets"
        log.warning(
            "job %s; submitting it from %s",
            "missing" if state == MISSING else f"ended ({state})",
            source,
            extra={"job_state": state, "restore_from": source},
        )
        started = time.monotonic()
        try:
            job_id = submit(
                self.rest_url,
                self.flink_bin,
                120,
                self.log_file,
                restore_from=str(restore.path) if restore else None,
            )
        except SubmissionError as exc:
            metrics.FLINK_JOB_RESUBMISSIONS.labels("failed").inc()
            self.failed_submissions += 1
            if restore and exc.job_failed:
                self.rejected.add(restore.path)  # next time: an older checkpoint, or the offsets
            log.error("submission failed: %s", exc, extra={"restore_from": source})
            time.sleep(min(5.0 * self.failed_submissions, 30.0))
            return
        except (OSError, urllib.error.URLError) as exc:  # the JobManager went away meanwhile
            metrics.FLINK_JOB_RESUBMISSIONS.labels("interrupted").inc()
            log.warning("submission interrupted: %s", exc)
            return
        metrics.FLINK_JOB_RESUBMISSIONS.labels("submitted").inc()
        log.warning(
            "job resubmitted",
            extra={"job_id": job_id, "restore_from": source, "took_s": round(time.monotonic() - started, 1)},
        )

    def run_forever(self) -> None:
        log.info("watching '%s'", self.rest_url, extra={"checkpoints": str(self.checkpoints)})
        while True:
            try:
                self.tick()
            except Exception:  # never give up: log it and look again
                log.exception("watchdog tick failed")
            time.sleep(self.settings.watchdog_interval_s)


def check(settings: WatchdogSettings) -> int:
    """For healthchecks and scripts: prints the job's state; 0 only when it is active."""
    try:
        state = score_job_state(list_jobs(settings.flink_rest_url, timeout_s=5))
    except (OSError, ValueError, KeyError) as exc:
        print(f"UNREACHABLE: {exc}")
        return 1
    print(state)
    return 0 if state in ACTIVE_STATES else 1


def main(argv: list[str] | None = None) -> None:
    from common.logging import configure_logging

    parser = argparse.ArgumentParser(
        prog="flink_job.watchdog", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="print the job's state and exit (0: active)")
    parser.add_argument("--log-file", type=Path, help="where to keep the output of the last `flink run`")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = WatchdogSettings()
    if args.check:
        raise SystemExit(check(settings))
    configure_logging(SERVICE, settings.log_level)
    metrics.serve_worker_metrics(settings)
    Watchdog(settings, settings.flink_bin or default_flink_bin(), args.log_file).run_forever()


if __name__ == "__main__":
    main()

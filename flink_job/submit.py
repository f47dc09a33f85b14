"""Submits the Flink Score Validator Job unless it already runs (the watchdog's tool; also a one-shot CLI).

    python -m flink_job.submit [--rest-url http://localhost:8081] [--flink-bin PATH] [--wait-s 120]
                               [--from-checkpoint PATH]

Python jobs go through `flink run -d -py` (the REST jar-run endpoint does not take them). The job's
own code (common/ and flink_job/) travels as one zip that Flink puts on the workers' path.
`python -m flink_job.watchdog` keeps the job deployed; this module submits it once.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from common.flink_rest import SCORE_JOB_NAME as JOB_NAME
from common.flink_rest import job_state, list_jobs, score_job_active
from flink_job.config import WatchdogSettings

ROOT = Path(__file__).resolve().parent.parent
JOB_ID = re.compile(r"JobID ([0-9a-f]{32})")

log = logging.getLogger("flink_job.submit")


class SubmissionError(RuntimeError):
    """`flink run` failed, or the job it submitted did not start. `job_failed`: Flink took the job
    and it FAILED at once (e.g. its checkpoint could not be restored)."""

    def __init__(self, message: str, *, job_failed: bool = False) -> None:
        super().__init__(message)
        self.job_failed = job_failed


def job_active(rest_url: str) -> bool:
    return score_job_active(list_jobs(rest_url))


def bundle_job_code(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for package in ("common", "flink_job"):
            for file in sorted((ROOT / package).rglob("*.py")):
                zf.write(file, file.relative_to(ROOT))
    return dest


def default_flink_bin() -> str:
    import pyflink

    return str(Path(pyflink.__file__).parent / "bin" / "flink")


def flink_run_command(flink_bin: str, rest_url: str, deps: Path, restore_from: str | None) -> list[str]:
    rest = urlparse(rest_url)
    # Given explicitly: in a container the client's own config file may still say localhost.
    options = [
        f"-Drest.address={rest.hostname}",
        f"-Drest.port={rest.port or 8081}",
        f"-Dpython.client.executable={sys.executable}",
    ]
    if restore_from:
        # --allowNonRestoredState: a newer job version may have dropped an operator's state.
        options += ["--fromSavepoint", restore_from, "--allowNonRestoredState"]
    return [flink_bin, "run", *options, "-d", "-py", str(ROOT / "flink_job" / "job.py"), "-pyfs", str(deps)]


def submit(
    rest_url: str,
    flink_bin: str,
    wait_s: float,
    log_file: Path | None = None,
    *,
    restore_from: str | None = None,
) -> str | None:
    """Submits the job; returns its JobID, or None when it was already running.

    Raises SubmissionError when `flink run` fails or the job does not become active in `wait_s`.
    """
    if job_active(rest_url):
        log.info("'%s' already running", JOB_NAME)
        return None
    log.info("submitting '%s' to %s", JOB_NAME, rest_url, extra={"restore_from": restore_from})
    with tempfile.TemporaryDirectory() as tmp:
        deps = bundle_job_code(Path(tmp) / "job-deps.zip")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            result = subprocess.run(
                flink_run_command(flink_bin, rest_url, deps, restore_from),
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SubmissionError(f"could not run the flink client: {exc}") from exc
    output = result.stdout + result.stderr
    if log_file:
        log_file.write_text(output)
    if result.returncode != 0:
        raise SubmissionError(f"submission failed (exit {result.returncode}):\n{output[-3000:]}")
    match = JOB_ID.search(output)
    job_id = match.group(1) if match else None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if job_id and job_state(rest_url, job_id) == "FAILED":
            raise SubmissionError(f"job {job_id} failed right after submission; see the Flink log", job_failed=True)
        if job_active(rest_url):
            log.info("'%s' is running", JOB_NAME, extra={"job_id": job_id})
            return job_id or "unknown"
        time.sleep(1)
    raise SubmissionError(f"'{JOB_NAME}' did not start within {wait_s:.0f}s; see the Flink dashboard")


def main(argv: list[str] | None = None) -> None:
    from common.logging import configure_logging

    settings = WatchdogSettings()
    parser = argparse.ArgumentParser(
        prog="flink_job.submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rest-url", default=settings.flink_rest_url)
    parser.add_argument("--flink-bin", default=settings.flink_bin)
    parser.add_argument("--wait-s", type=float, default=120)
    parser.add_argument("--from-checkpoint", help="a retained checkpoint (or savepoint) folder to restore from")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging("flink-job-submit", settings.log_level)
    try:
        submit(
            args.rest_url.rstrip("/"),
            args.flink_bin or default_flink_bin(),
            args.wait_s,
            restore_from=args.from_checkpoint,
        )
    except (SubmissionError, OSError, urllib.error.URLError) as exc:
        raise SystemExit(f"[flink-job] {exc}") from exc


if __name__ == "__main__":
    main()

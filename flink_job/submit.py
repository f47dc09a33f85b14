"""Submits the Flink Score Validator Job unless it already runs (native `make up` and compose alike).

    python -m flink_job.submit [--rest-url http://localhost:8081] [--flink-bin PATH] [--wait-s 120]

Python jobs go through `flink run -d -py` (the REST jar-run endpoint does not take them). The job's
own code (common/ and flink_job/) travels as one zip that Flink puts on the workers' path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from common.flink_rest import SCORE_JOB_NAME as JOB_NAME
from common.flink_rest import list_jobs, score_job_active

ROOT = Path(__file__).resolve().parent.parent


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


def submit(rest_url: str, flink_bin: str, wait_s: float, log_file: Path | None = None) -> bool:
    """Returns True when it submitted, False when the job was already running."""
    if job_active(rest_url):
        print(f"[flink-job] '{JOB_NAME}' already running", flush=True)
        return False
    print(f"[flink-job] submitting '{JOB_NAME}' to {rest_url}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        deps = bundle_job_code(Path(tmp) / "job-deps.zip")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        rest = urlparse(rest_url)
        # Given explicitly: in a container the client's own config file may still say localhost.
        options = [
            f"-Drest.address={rest.hostname}",
            f"-Drest.port={rest.port or 8081}",
            f"-Dpython.client.executable={sys.executable}",
        ]
        result = subprocess.run(
            [flink_bin, "run", *options, "-d", "-py", str(ROOT / "flink_job" / "job.py"), "-pyfs", str(deps)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = result.stdout + result.stderr
    if log_file:
        log_file.write_text(output)
    if result.returncode != 0:
        raise SystemExit(f"[flink-job] submission failed (exit {result.returncode}):\n{output[-3000:]}")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if job_active(rest_url):
            print(f"[flink-job] '{JOB_NAME}' is running", flush=True)
            return True
        time.sleep(1)
    raise SystemExit(f"[flink-job] '{JOB_NAME}' did not start within {wait_s:.0f}s; see the Flink dashboard")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flink_job.submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rest-url",
        default=os.environ.get("FLINK_REST_URL", f"http://localhost:{os.environ.get('FLINK_REST_PORT', '8081')}"),
    )
    parser.add_argument("--flink-bin", default=os.environ.get("FLINK_BIN"))
    parser.add_argument("--wait-s", type=float, default=120)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    submit(args.rest_url.rstrip("/"), args.flink_bin or default_flink_bin(), args.wait_s)


if __name__ == "__main__":
    main()

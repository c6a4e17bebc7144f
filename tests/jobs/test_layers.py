"""The job packages import one way (the import-linter contracts in pyproject.toml): ``build`` knows
both runners, the runners only their interface; the job service's execution sits on its context and
queries, which sit on its parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_job_packages_keep_their_import_layers() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "job runners: build -> the two runners -> their interface KEPT" in done.stdout
    assert "job service: execution -> context and queries -> params KEPT" in done.stdout

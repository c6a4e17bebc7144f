"""The change counter: a bump is seen through every mapping of the file, and only committed changes bump."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.db.session import session_scope
from app.services.changes import ChangeCounter, mark_changed

REPO = Path(__file__).resolve().parents[2]


def test_a_bump_in_another_process_is_seen_at_once(tmp_path: Path) -> None:
    counter = ChangeCounter(tmp_path / ".changes")
    before = counter.value()
    bump = f"from app.services.changes import ChangeCounter; ChangeCounter({str(counter.path)!r}).bump()"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", bump], env=env, check=True, timeout=120)
    assert counter.value() == before + 1
    counter.close()


def test_marked_sessions_bump_when_they_commit_and_not_when_they_roll_back(
    tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    counter = ChangeCounter(tmp_path / ".changes")
    start = counter.value()
    with session_scope(session_factory) as s:
        mark_changed(s)
        assert counter.value() == start  # not before the commit: a refill would read the old rows
    assert counter.value() == start + 1
    try:
        with session_scope(session_factory) as s:
            mark_changed(s)
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    with session_scope(session_factory):
        pass  # an unmarked commit
    assert counter.value() == start + 1
    counter.close()

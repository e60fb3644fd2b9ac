"""Two `slotrun train` processes on one run directory: the second is refused with one line (exit 2) and
touches nothing; the first finishes as if it had been alone, bitwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import cli_runs as cr


def stop(pid: int, timeout: float = 60.0) -> None:
    """SIGSTOP `pid` and wait until it is stopped: kill() returns before a busy machine has scheduled the signal,
    and the process may write a little more in between."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop within {timeout} s")
        time.sleep(0.01)


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.xdist_group("cli_runs")  # shares the cli_straight run with test_engine_kill_random.py
def test_a_second_process_on_a_run_dir_is_refused_and_the_first_is_unharmed(
        tmp_path: Path, cli_straight: tuple[Path, dict[str, Any]]) -> None:
    recipe, alone = cli_straight
    run = tmp_path / "run"
    first = cr.Watched(cr.command(recipe, run))
    try:
        assert first.wait_for(r"^step 3/") is not None, first.stderr()
        holder = json.loads((run / ".lock").read_text())
        assert holder["pid"] == first.proc.pid
        # Paused mid-run while the second one tries, so the two surely overlap however slow the machine is,
        # and so that anything the second process wrote would show.
        stop(first.proc.pid)
        try:
            before = snapshot(run)
            second = subprocess.run(cr.command(recipe, run), env=cr.ENV, capture_output=True, text=True,
                                    timeout=300)
            after = snapshot(run)
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"slotrun: error: run directory {run} is in use by another slotrun process "
                                   f"(pid {first.proc.pid} on "), lines[0]
        assert str(run / ".lock") in lines[0]
        assert "Traceback" not in second.stderr and second.stdout == ""
        assert after == before  # the refused process changed nothing, not even the lock file
        assert first.finish() == 0, first.stderr()[-3000:]
    finally:
        first.kill()
    cr.assert_intact(run)
    cr.assert_same(cr.record(run), alone)

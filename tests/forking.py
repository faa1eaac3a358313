"""Forking in a test: the child reports on a pipe, the parent waits for it
with a deadline."""

from __future__ import annotations

import os
import signal
import time

import pytest


def read_with_deadline(fd: int, pid: int, timeout: float) -> str:
    """What the child ``pid`` wrote on ``fd`` once it exited (with 0); kill
    it and fail if it has not exited within ``timeout`` seconds (a deadlock
    in the child)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
            pytest.fail(f"the forked child did not finish within {timeout} s")
        time.sleep(0.01)
    with os.fdopen(fd) as pipe:
        report = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report

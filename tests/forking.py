"""Forking in a test: the child reports on a pipe, the parent waits for it
with a deadline."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

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


def fork_while_held(lock: Any, child: Callable[[], str], timeout: float = 20) -> str:
    """Fork while another thread holds ``lock``, run ``child`` in the forked
    child and return what it returned; fail if the child deadlocks (on the
    lock left held, say) or fails."""
    holding = threading.Event()
    release = threading.Event()

    def hold_the_lock() -> None:
        with lock:
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    try:
        assert holding.wait(10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: reports on the pipe, never returns into pytest
            code = 1
            try:
                os.close(read)
                os.write(write, child().encode())
                code = 0
            except BaseException:
                os.write(write, traceback.format_exc().encode())
            finally:
                os._exit(code)
        os.close(write)
        return read_with_deadline(read, pid, timeout)
    finally:
        release.set()
        thread.join(10)

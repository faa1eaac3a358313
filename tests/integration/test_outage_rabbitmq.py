"""Nothing lost across a RabbitMQ outage: the drill of test_outage.py against
a private RabbitMQ node, started and killed by the test (never the shared
service on 5672), a real worker, the spool."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection

import eventlib
from eventlib.sending import spool_status

from ..waiting import wait_for
from .support import Project
from .test_outage import crash_a_flusher_after_its_first_publish, log_through_a_broker_kill, quiet

#: The start script itself: Debian's /usr/sbin/rabbitmq-server is a wrapper
#: that switches to the rabbitmq user and to the shared node's directories.
PACKAGED_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"

#: RabbitMQ boots in about 5 seconds; a slow CI machine may take longer.
START_TIMEOUT = 90


def rabbitmq_server_script() -> str | None:
    if os.access(PACKAGED_SCRIPT, os.X_OK):
        return PACKAGED_SCRIPT
    return shutil.which("rabbitmq-server")


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux); Erlang's port programs
    (erl_child_setup, inet_gethost, the disk monitor) run in sessions of
    their own, outside the node's process group."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class PrivateRabbitMQ:
    """A RabbitMQ node of the test's own: its own node name, AMQP and
    distribution ports, configuration, Erlang cookie (its own HOME) and data
    directory, which a restart keeps, with the durable queues and the
    persistent messages in them."""

    def __init__(self, script: str, directory: Path) -> None:
        self.script = script
        self.directory = directory
        self.port, dist_port = free_ports(2)
        self.node = f"eventlib-test-{uuid.uuid4().hex[:10]}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        home = directory / "home"
        home.mkdir(parents=True)
        config = directory / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        self.pid_file = directory / "beam.pid"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        self.env.update(
            HOME=str(home),  # Erlang creates the node's cookie there
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(dist_port),
            RABBITMQ_CONF_ENV_FILE=str(directory / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(config),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(directory / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(directory / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(directory / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def output(self) -> Path:
        return self.directory / f"server-{self.starts}.out"

    def start(self) -> None:
        self.starts += 1
        self.pid_file.unlink(missing_ok=True)
        with open(self.output, "wb") as output:
            self.process = subprocess.Popen(
                [self.script],
                env=self.env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its process group is the node's
            )
        wait_for(self._ready, START_TIMEOUT, f"the private RabbitMQ node {self.node}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(
                f"the private RabbitMQ node exited with {self.process.returncode}:\n"
                + self.output.read_text(errors="replace")[-5000:]
            )
        if not self._accepts():
            return False
        try:
            with Connection(self.url, connect_timeout=2) as connection:
                connection.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0, interval_max=0
                )
        except Exception:
            return False
        return True

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM, as a crash would, then the rest of
        its process group and the port programs below it."""
        assert self.process is not None
        group = self.process.pid
        below = descendants(group)
        try:
            beam = int(self.pid_file.read_text())
            if os.getpgid(beam) == group:
                os.kill(beam, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # not booted that far, or already gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        wait_for(lambda: not self._accepts(), 30, f"the killed node {self.node} to go")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def queue_idle(self, name: str) -> Callable[[], bool]:
        """Whether no message of the queue ``name`` waits or is held
        unacknowledged by a consumer (``rabbitmqctl list_queues``): every
        message published so far was processed.  A queue that does not exist
        holds nothing."""
        command = [
            str(Path(self.script).with_name("rabbitmqctl")),
            *("-n", self.node, "list_queues", "-q", "--no-table-headers"),
            *("name", "messages_ready", "messages_unacknowledged"),
        ]

        def idle() -> bool:
            listed = subprocess.run(
                command,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert listed.returncode == 0, listed.stderr
            for line in listed.stdout.splitlines():
                queue, ready, unacked = line.split("\t")
                if queue == name:
                    return int(ready) == int(unacked) == 0
            return True

        return idle


@pytest.fixture
def rabbitmq(tmp_path):
    script = rabbitmq_server_script()
    if script is None:
        message = "rabbitmq-server is not installed"
        if os.environ.get("EVENTLIB_REQUIRE_BROKERS") == "1":
            pytest.fail(f"{message}; EVENTLIB_REQUIRE_BROKERS=1 forbids skipping")
        pytest.skip(message)
    server = PrivateRabbitMQ(script, tmp_path / "rabbitmq")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def outage_project(isolation, tmp_path, rabbitmq):
    project = Project(isolation, tmp_path, rabbitmq.url, "eventlib")
    yield project
    project.close()


def test_events_logged_during_a_rabbitmq_outage_are_spooled_then_all_processed(
    outage_project, rabbitmq
):
    project = outage_project
    worker = project.start_worker()
    project.configure_here()
    eventlib.configure(broker_timeout=0.5, spool_probe_interval=0.5)

    before = [eventlib.log("shop.Purchase", {"sku": f"before-{n}"}) for n in range(100)]
    assert eventlib.flush(timeout=30)  # RabbitMQ confirmed them all
    rabbitmq.kill()
    started = time.monotonic()
    during = [eventlib.log("shop.Purchase", {"sku": f"during-{n}"}) for n in range(300)]
    logging_seconds = time.monotonic() - started
    assert eventlib.flush(timeout=10) is False
    assert spool_status().count == len(during)
    rabbitmq.start()  # same port, same data directory

    wait_for(lambda: spool_status().count == 0, 60, "the spool to drain")
    everything = set(before) | set(during)
    # The worker reconnects by itself (Celery retries the broker connection).
    try:
        wait_for(
            lambda: everything <= set(project.records.runs_per_event("audit")),
            60,
            "every event to be processed",
        )
    except pytest.fail.Exception as timeout:
        pytest.fail(f"{timeout}; the worker's log:\n{worker.log[-5000:]}")
    runs = project.records.runs_per_event("audit")
    assert set(runs) == everything  # nothing lost, nothing unknown
    # At least once: the events the worker was running when RabbitMQ died
    # (acknowledged late, the acks failed) and those whose acks the node had
    # not written down yet come back once; none of those logged during the
    # outage was ever published twice.
    twice = {event_id for event_id, count in runs.items() if count > 1}
    print(f"processed twice: {len(twice)}, logging 300 events took {logging_seconds:.3f}s")
    assert not twice & set(during), twice
    assert twice <= set(before)
    # 300 spooled calls with a dead broker: far from 300 timeouts of 0.5 s.
    assert logging_seconds < 30


def test_threads_logging_while_rabbitmq_is_killed_mid_call_lose_nothing(outage_project, rabbitmq):
    """test_outage.py's mid-stream kill with a RabbitMQ node: four threads
    keep calling log() while the node's Erlang VM is killed (SIGKILL, by its
    pid) during one of the calls, until 100 events are spooled, and while it
    restarts; they go on until the process's flusher drained the spool.  Then
    a worker starts, and every event logged is processed, twice only if its
    log() call was in progress while the node was being killed (the node
    stored the message and died before its confirmation reached log(), which
    spooled the event too)."""
    project = outage_project
    project.configure_here()

    # Fewer events per second: the node takes seconds to restart, and the
    # threads log all along.
    outage = log_through_a_broker_kill(rabbitmq.kill, rabbitmq.start, pause=0.03, spooled=100)

    project.start_worker()
    wait_for(quiet(project, rabbitmq.queue_idle("eventlib")), 180, "the worker to empty the queue")
    print(outage.check_processed(project.records.runs_per_event("audit")))


def test_a_flusher_killed_after_a_confirmed_publish_duplicates_that_event_and_loses_none(
    outage_project, rabbitmq, tmp_path
):
    """test_outage.py's crashed flusher with a RabbitMQ node: the flusher is
    killed once the node confirmed the first event (publisher confirms), before
    the spool forgets it."""
    crash_a_flusher_after_its_first_publish(
        outage_project, tmp_path, rabbitmq.kill, rabbitmq.start, rabbitmq.queue_idle("eventlib")
    )

"""The embedded broker's transport used the way a Celery worker uses it:
one thread polls the queue while another gives messages back."""

from __future__ import annotations

import contextlib
import queue
import threading
import time

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from eventlib.embedded import url_for

MESSAGES = 100


class GiveBack(threading.Thread):
    """What the pool's result-handler thread of a worker does with the
    message of a lost pool process: reject it with requeue, on the channel
    the main thread polls.  Each message is rejected the first time it is
    handed over, and acknowledged the second time."""

    def __init__(self) -> None:
        super().__init__(name="give-back")
        self.handed_over: queue.Queue[Message | None] = queue.Queue()
        self.seen: dict[int, int] = {}
        self.failures: list[BaseException] = []

    def on_message(self, body: dict[str, int], message: Message) -> None:
        self.seen[body["n"]] = self.seen.get(body["n"], 0) + 1
        self.handed_over.put(message)

    def run(self) -> None:
        while (message := self.handed_over.get()) is not None:
            try:
                if self.seen[message.payload["n"]] == 1:
                    message.reject(requeue=True)
                else:
                    message.ack()
            except BaseException as error:
                self.failures.append(error)

    def done(self) -> bool:
        if self.failures:
            raise self.failures[0]
        return self.seen == dict.fromkeys(range(MESSAGES), 2)

    def stop(self) -> None:
        self.handed_over.put(None)
        self.join(30)


def test_a_message_requeued_by_another_thread_while_the_consumer_polls_comes_back(tmp_path):
    """Both threads use the one channel at the same time; every message
    comes back once, and the polling thread never fails (it did, with
    "This session is in 'prepared' state", when the channel's SQLAlchemy
    session was shared without a lock: docs/deployment.md)."""
    with Connection(url_for(tmp_path / "broker.sqlite")) as connection:
        channel = connection.default_channel
        declared = Queue("requeued", Exchange("requeued"), "requeued", channel=channel)
        declared.declare()
        producer = Producer(channel, exchange=declared.exchange, routing_key="requeued")
        for number in range(MESSAGES):
            producer.publish({"n": number}, serializer="json")

        give_back = GiveBack()
        give_back.start()
        try:
            with Consumer(channel, [declared], callbacks=[give_back.on_message], accept=["json"]):
                deadline = time.monotonic() + 60
                while not give_back.done():  # as Celery's loop without an event loop
                    if time.monotonic() > deadline:
                        pytest.fail(f"after 60 s, deliveries per message: {give_back.seen}")
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.1)
        finally:
            give_back.stop()
    assert not give_back.failures

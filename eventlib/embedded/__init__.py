"""The embedded broker: a kombu transport on an SQLite file.

Used when no broker is configured, so that a first run needs no server.  It
is kombu's SQLAlchemy transport with five changes for this use:

- it polls every 50 ms instead of every second, so an idle worker picks up a
  new event at once;
- it deletes the rows of messages it has handed to a consumer, which the
  stock transport keeps forever (a taken message lives on in the consumer's
  memory until it is acknowledged or requeued as a new row);
- SQLite's busy timeout is ``broker_timeout``, so ``log()`` waits no longer
  for a locked database than for any other broker;
- a channel's SQLAlchemy session is used by one thread at a time: a Celery
  worker polls in its main thread and gives back the message of a lost pool
  process in another, which, on the stock transport, can break the shared
  session, kill the worker and lose the message;
- the bindings of the broadcast exchange (:mod:`eventlib.broadcast`) are
  kept in the file, not in the memory of the process that made them, so
  that a worker publishes to the groups its listeners created.

It is registered with kombu as the scheme ``eventlib+sqlite``.  Its file is
``broker.sqlite`` in eventlib's state folder (:func:`default_path`), so
that every process of a project on the host, whatever folder it starts in,
sends to and takes from the same queues.  Like any
SQLite database it serves the processes of one machine; an event that a
worker was processing when it was killed is not delivered again (there is no
visibility timeout): use Redis or RabbitMQ in production.
"""

from __future__ import annotations

from pathlib import Path

from kombu.transport import TRANSPORT_ALIASES

from ..conf import state_file

__all__ = ["SCHEME", "default_path", "url_for"]

SCHEME = "eventlib+sqlite"

# Resolved only when used: the transport needs SQLAlchemy.
TRANSPORT_ALIASES.setdefault("eventlib", "eventlib.embedded.transport:Transport")


def url_for(path: str | Path) -> str:
    """The broker URL of the embedded broker storing its queue in ``path``
    (made absolute, so that every process finds the same file)."""
    return f"{SCHEME}:///{Path(path).resolve()}"


def default_path() -> Path:
    """The file of the embedded broker when no broker is configured:
    ``broker.sqlite`` in :func:`eventlib.conf.state_directory`, the folder
    created when missing (:func:`eventlib.conf.state_file`)."""
    return state_file("broker.sqlite")

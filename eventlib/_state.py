"""The state of an eventlib process, and the one place that looks after it.

Every piece of state a process keeps has one owner: an object that holds it
together with the lock that guards it.  There are two kinds.

- Process state, built when it is first needed: the sending side
  (:data:`eventlib.sending.sender`), the dead-letter database
  (:mod:`eventlib.deadletters`), the counters (:mod:`eventlib.metrics`), and
  the event classes and apps found so far (:mod:`eventlib.discovery`).  Its
  owner has ``reset()``, which puts it back as a new process has it.
- Declarations, made by the code a process imports: the handler registry
  (:data:`eventlib.HANDLER_REGISTRY`) and the registered types
  (:mod:`eventlib.serialization`).  Its owner has ``_snapshot()`` and
  ``_restore(snapshot)`` instead: nothing could declare them again.

Every owner has ``_after_fork()``: in a child forked by ``os.fork()`` it
starts afresh, with a lock of its own (another thread of the parent may have
held the parent's at the moment of the fork) and none of its parent's
threads or connections.  An owner that must make a fork wait (until it is
done with something a child must not inherit half done) also has
``_before_fork()`` and ``_after_fork_in_parent()``.

Owners register here when their module is imported, and only here are the
at-fork hooks and the settings listener: before a fork, the owners'
``_before_fork()`` run, in the reverse order of their registration (as
``os.register_at_fork`` runs its own); after it, every owner's
``_after_fork()`` runs in the child, and ``_after_fork_in_parent()`` in the
parent, in the order they registered; when the settings change
(:func:`eventlib.configure`), the owners of state built from them are reset.
:func:`reset` and :func:`snapshot` serve :mod:`eventlib.testing`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from . import conf

__all__ = ["Declarations", "ProcessState", "declarations", "process_state", "reset", "snapshot"]


class ProcessState(Protocol):
    """The owner of process state."""

    def reset(self) -> None:
        """Forget the state, as a new process has none; what holds
        connections or threads closes or stops them first."""

    def _after_fork(self) -> None:
        """In a forked child: start afresh, leaving the parent's threads and
        connections alone."""


class Declarations(Protocol):
    """The owner of declarations."""

    def _snapshot(self) -> Any:
        """What is declared now, for :meth:`_restore`."""

    def _restore(self, snapshot: Any) -> None:
        """Declare again what ``snapshot`` holds, and nothing else."""

    def _after_fork(self) -> None:
        """In a forked child: a lock of its own."""


_owners: list[ProcessState | Declarations] = []
_process_state: list[ProcessState] = []
_built_from_settings: list[ProcessState] = []
_declarations: list[Declarations] = []


def process_state(owner: ProcessState, *, built_from_settings: bool = False) -> None:
    """Register ``owner``; with ``built_from_settings``, it is reset
    whenever the settings change."""
    _owners.append(owner)
    _process_state.append(owner)
    if built_from_settings:
        _built_from_settings.append(owner)


def declarations(owner: Declarations) -> None:
    """Register ``owner``."""
    _owners.append(owner)
    _declarations.append(owner)


def reset() -> None:
    """Read the settings again from the environment alone, and reset every
    owner of process state (see :func:`eventlib.testing.reset`)."""
    conf.reset()  # which resets the owners built from settings
    for owner in _process_state:
        if owner not in _built_from_settings:
            owner.reset()


def snapshot() -> Callable[[], None]:
    """Take what is declared now; the function returned declares it again,
    and nothing else."""
    taken = [(owner, owner._snapshot()) for owner in _declarations]

    def restore() -> None:
        for owner, declared in taken:
            owner._restore(declared)

    return restore


def _settings_changed(_: conf.Settings) -> None:
    for owner in _built_from_settings:
        owner.reset()


def _before_fork() -> None:
    for owner in reversed(_owners):
        before = getattr(owner, "_before_fork", None)
        if before is not None:
            before()


def _after_fork_in_parent() -> None:
    for owner in _owners:
        after = getattr(owner, "_after_fork_in_parent", None)
        if after is not None:
            after()


def _after_fork_in_child() -> None:
    for owner in _owners:
        owner._after_fork()


conf.on_change(_settings_changed)
os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)

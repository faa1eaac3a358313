"""Dead letters in Django's admin: list them, filter them by event, handler
and time, show one, retry it, purge them.

With ``django.contrib.admin`` installed, the admin's index lists *Dead
letters* under *Eventlib*, at ``<admin>/eventlib/deadletter/``.  The pages
read and write eventlib's own database (the ``dead_letter_url`` setting)
through :mod:`eventlib.deadletters`, not Django's ORM:
:class:`~eventlib.contrib.django.models.DeadLetter` is only their entry in
the admin, their URLs and their permissions.

Like every admin page they are for staff only (others are sent to the
admin's login page); showing needs the permission
``eventlib.view_deadletter``, retrying ``eventlib.change_deadletter`` and
purging ``eventlib.delete_deadletter`` (a superuser has them all), or 403.

- The list, most recent failure first, 100 a page, filtered by the query's
  ``event`` (``shop.Refund``), ``handler`` (a qualified name) and ``since``
  (``1h``, ``24h`` or ``7d``), which the sidebar offers.
- A dead letter's page: its event, handler, attempts, reason, data (as
  stored) and traceback, with a *Retry* button.
- *Retry* (a POST) sends it to the workers, as ``eventlib dead retry`` does
  (in eager mode it runs at once): a success removes it.
- *Purge* asks for confirmation, then deletes the dead letters the list's
  filters keep.

A dead-letter database that cannot be used answers 503, naming it and
SQLAlchemy's error; a broker that cannot take a retry is an error message
naming it, and the dead letter stays.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from sqlalchemy.exc import SQLAlchemyError

from eventlib import deadletters
from eventlib.exceptions import DispatchError

from .models import DeadLetter

__all__ = ["PER_PAGE", "SINCE", "TEMPLATES", "DeadLetterAdmin", "Filters"]

#: How many dead letters a page of the list shows.
PER_PAGE = 100
#: The ``since`` filter's choices: the query's value, its label and its age.
SINCE = {
    "1h": ("Past hour", timedelta(hours=1)),
    "24h": ("Past 24 hours", timedelta(days=1)),
    "7d": ("Past 7 days", timedelta(days=7)),
}
TEMPLATES = "admin/eventlib/deadletter/"


@dataclass(frozen=True)
class Filters:
    """What the list keeps, from the query: ``event``, ``handler`` and
    ``since`` (a key of :data:`SINCE`)."""

    event: str | None = None
    handler: str | None = None
    since: str | None = None

    @classmethod
    def of(cls, request: HttpRequest) -> Filters:
        """The filters of ``request``'s query; an unknown ``since`` is left
        out, with an error message saying which values it takes."""
        since = request.GET.get("since") or None
        if since is not None and since not in SINCE:
            messages.error(
                request,
                f"The time since={since!r} is not one the list knows ({', '.join(SINCE)}): "
                "it is left out.",
            )
            since = None
        return cls(request.GET.get("event") or None, request.GET.get("handler") or None, since)

    def keywords(self) -> dict[str, Any]:
        """As :func:`eventlib.deadletters.list_dead_letters` and
        :func:`~eventlib.deadletters.purge` take them."""
        since = None if self.since is None else datetime.now(UTC) - SINCE[self.since][1]
        return {"event": self.event, "handler": self.handler, "since": since}

    def query(self, **changes: str | None) -> str:
        """The query string of these filters with ``changes`` (``None``
        removes one)."""
        values = {"event": self.event, "handler": self.handler, "since": self.since, **changes}
        given = {name: value for name, value in values.items() if value is not None}
        return "?" + urlencode(given)

    def described(self) -> str:
        """`` of shop.Refund, of handler charge, failed in the past hour``;
        empty without filters."""
        words = [f"of {self.event}"] if self.event else []
        words += [f"of handler {self.handler}"] if self.handler else []
        words += [f"failed in the {SINCE[self.since][0].lower()}"] if self.since else []
        return "".join(" " + word for word in words)


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    """The admin's pages of dead letters (see the module documentation)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # dead letters are recorded by workers only

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("", wrap(self.changelist_view), name=f"{name}_changelist"),
            path("purge/", wrap(self.purge_view), name=f"{name}_purge"),
            path("<int:dead_letter_id>/", wrap(self.detail_view), name=f"{name}_change"),
            path("<int:dead_letter_id>/retry/", wrap(self.retry_view), name=f"{name}_retry"),
        ]

    # ------------------------------------------------------------ pages ---

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list, most recent failure first, with the filters' sidebar."""
        self._require(self.has_view_permission(request))
        filters = Filters.of(request)
        try:
            letters = deadletters.list_dead_letters(**filters.keywords())[::-1]
            every = deadletters.list_dead_letters()
        except SQLAlchemyError as error:
            return self._unusable(request, error)
        page = Paginator(letters, PER_PAGE).get_page(request.GET.get("p"))
        context = {
            **self._context(request, "Dead letters"),
            "letters": page.object_list,
            "page": page,
            "count": len(letters),
            "described": filters.described(),
            "filters": self._sidebar(filters, every),
            "filtered": filters != Filters(),
            "page_query": filters.query(p=None).removeprefix("?"),
            "purge_query": filters.query(),
            "can_purge": self.has_delete_permission(request) and bool(letters),
            **(extra_context or {}),
        }
        return TemplateResponse(request, TEMPLATES + "change_list.html", context)

    def detail_view(self, request: HttpRequest, dead_letter_id: int) -> HttpResponse:
        """One dead letter: everything about it, and its *Retry* button."""
        self._require(self.has_view_permission(request))
        try:
            letter = self._get(dead_letter_id)
        except SQLAlchemyError as error:
            return self._unusable(request, error)
        context = {
            **self._context(request, f"Dead letter {letter.id}"),
            "letter": letter,
            "data": _stored_data(letter.payload),
            "can_retry": self.has_change_permission(request),
        }
        return TemplateResponse(request, TEMPLATES + "detail.html", context)

    def retry_view(self, request: HttpRequest, dead_letter_id: int) -> HttpResponse:
        """POST: run the dead letter again (:func:`eventlib.deadletters.retry`)
        and say what came of it."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self._require(self.has_change_permission(request))
        try:
            before = self._get(dead_letter_id)
            deadletters.retry(dead_letter_id)
            after = deadletters.get(dead_letter_id)
        except DispatchError as error:
            messages.error(request, f"Dead letter {dead_letter_id} was not retried: {error}")
            return self._redirect("change", dead_letter_id)
        except SQLAlchemyError as error:
            return self._unusable(request, error)
        if after is None:
            done = (
                "the event was processed again (a handler that fails is a new dead letter)"
                if before.handler is None
                else f"{before.handler} succeeded"
            )
            messages.success(request, f"Dead letter {dead_letter_id} ran again: {done}.")
            return self._redirect("changelist")
        if after.attempts > before.attempts:
            messages.warning(request, f"Dead letter {dead_letter_id} failed again: {after.reason}")
        else:
            messages.success(
                request,
                f"Dead letter {dead_letter_id} was sent to the workers to run again; "
                "it is removed once it succeeds.",
            )
        return self._redirect("change", dead_letter_id)

    def purge_view(self, request: HttpRequest) -> HttpResponse:
        """GET: ask to confirm; POST: delete the dead letters the query's
        filters keep (:func:`eventlib.deadletters.purge`)."""
        self._require(self.has_delete_permission(request))
        filters = Filters.of(request)
        try:
            if request.method == "POST":
                purged = deadletters.purge(**filters.keywords())
                messages.success(request, f"Purged {_letters(purged)}{filters.described()}.")
                return self._redirect("changelist")
            count = len(deadletters.list_dead_letters(**filters.keywords()))
        except SQLAlchemyError as error:
            return self._unusable(request, error)
        context = {
            **self._context(request, "Purge dead letters"),
            "count": count,
            "letters": _letters(count),
            "described": filters.described(),
            "back": filters.query(),
        }
        return TemplateResponse(request, TEMPLATES + "purge.html", context)

    # ---------------------------------------------------------- helpers ---

    def _context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "database": deadletters.database_name(),
        }

    def _sidebar(self, filters: Filters, every: list[deadletters.DeadLetter]) -> list[Any]:
        """The filters' choices, as ``(title, [(label, query, selected)])``,
        each name with how many dead letters it has."""
        events = Counter(letter.event_name for letter in every)
        handlers = Counter(letter.handler for letter in every if letter.handler is not None)
        return [
            (
                "event",
                [("All", filters.query(event=None), filters.event is None)]
                + [
                    (f"{name} ({count})", filters.query(event=name), filters.event == name)
                    for name, count in sorted(events.items())
                ],
            ),
            (
                "handler",
                [("All", filters.query(handler=None), filters.handler is None)]
                + [
                    (f"{name} ({count})", filters.query(handler=name), filters.handler == name)
                    for name, count in sorted(handlers.items())
                ],
            ),
            (
                "last failure",
                [("Any time", filters.query(since=None), filters.since is None)]
                + [
                    (label, filters.query(since=value), filters.since == value)
                    for value, (label, _) in SINCE.items()
                ],
            ),
        ]

    def _get(self, dead_letter_id: int) -> deadletters.DeadLetter:
        letter = deadletters.get(dead_letter_id)
        if letter is None:
            raise Http404(f"There is no dead letter {dead_letter_id}")
        return letter

    def _redirect(self, page: str, *args: Any) -> HttpResponseRedirect:
        name = f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{page}"
        return HttpResponseRedirect(reverse(name, args=args))

    def _unusable(self, request: HttpRequest, error: SQLAlchemyError) -> HttpResponse:
        """503, naming the database and SQLAlchemy's error."""
        context = {
            **self._context(request, "Dead letters"),
            "error": str(error).splitlines()[0],
        }
        return TemplateResponse(request, TEMPLATES + "unusable.html", context, status=503)

    @staticmethod
    def _require(allowed: bool) -> None:
        if not allowed:
            raise PermissionDenied


def _stored_data(payload: str) -> str:
    """The event's data as stored, indented; the payload as it came when it
    is not eventlib's."""
    try:
        return json.dumps(json.loads(payload)["data"], indent=2, sort_keys=True)
    except (ValueError, TypeError, KeyError):
        return payload


def _letters(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"

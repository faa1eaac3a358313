"""eventlib in a Django project: add ``"eventlib.contrib.django"`` to
``INSTALLED_APPS``.

At start-up the app (:class:`~eventlib.contrib.django.apps.EventlibConfig`)
configures eventlib from the ``EVENTLIB_*`` Django settings, imports the
``events`` module of every installed app and makes ``log(...,
on_commit=True)`` wait for the database transaction to commit.  With
Django's admin installed, the admin has a page of dead letters
(:mod:`eventlib.contrib.django.admin`).  Needs Django 4.2 or newer; the rest
of eventlib does not need Django.  See docs/django.md.
"""

from .apps import EventlibConfig, configure_from_settings

__all__ = ["EventlibConfig", "configure_from_settings"]

"""The one model of eventlib's Django app, :class:`DeadLetter`: what gives
the dead letters their page in Django's admin
(:mod:`eventlib.contrib.django.admin`)."""

from __future__ import annotations

from django.db import models

__all__ = ["DeadLetter"]


class DeadLetter(models.Model):
    """The dead letters as Django's admin knows them: their entry in the
    admin's index, their URLs and their permissions (``view``; ``change``,
    to retry one; ``delete``, to purge them).

    It has no table (``managed = False``, and the app has no migrations):
    the dead letters live in eventlib's own database, the ``dead_letter_url``
    setting, read and written through :mod:`eventlib.deadletters`.  Nothing
    queries this model.
    """

    id = models.IntegerField(primary_key=True)

    class Meta:
        managed = False
        verbose_name = "dead letter"
        verbose_name_plural = "dead letters"
        default_permissions = ("view", "change", "delete")

    def __str__(self) -> str:
        return f"dead letter {self.id}"

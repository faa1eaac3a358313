"""A minimal Django project for tests/test_django.py, which holds its
settings: the ``shop`` app declares the model ``Order`` and the event
``OrderPlaced``, the ``notifications`` app a function handler for it."""

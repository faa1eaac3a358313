"""``python -m eventlib``: the same as the ``eventlib`` command."""

from .cli import main

main(prog_name="eventlib")

"""``python -m slas ...``: the ``slas`` command, runnable without the console script (the local job backend uses it)."""

from slas.cli import app

if __name__ == "__main__":
    app(prog_name="slas")

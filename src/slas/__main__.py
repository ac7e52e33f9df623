"""``python -m slas ...``: the ``slas`` command, runnable without the console script (the local job backend uses it)."""

from slas.cli import main

if __name__ == "__main__":
    main()

"""``python -m supervisor``: the same command line as ``spectacles-supervisor``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m supervisor``: the same command line as ``spectacles-supervisor``."""

from supervisor.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

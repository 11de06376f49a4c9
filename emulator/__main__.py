"""``python -m mynacard`` runs the ``mynacard`` command."""

from mynacard.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m voicekit ...`: see voicekit.cli."""

from voicekit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m presetdb ...`: the same as the `presetdb` command."""

from __future__ import annotations

from presetdb.cli import main

if __name__ == "__main__":
    main()

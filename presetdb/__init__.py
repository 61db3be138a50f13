"""presetdb: pre-tuned Helion kernel configs in a shippable, auditable SQLite database."""

from __future__ import annotations

__version__ = "0.1.0"

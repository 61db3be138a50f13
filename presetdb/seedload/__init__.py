"""Seed data for data migrations.

Data migrations made by ``presetdb new-migration`` call a *versioned* loader
(`presetdb.seedload.v1`), never the live importers or models: released migrations must
keep working when those evolve. `author` writes new data migrations.
"""

from __future__ import annotations

"""presetdb's Alembic migrations (shipped in the wheel as `presetdb.migrations`).

Schema revisions change tables; data revisions (``NNNN_data_<slug>.py``) import seed
results from `presetdb.seed_data`. Run them through `presetdb db upgrade`, never with a
bare `alembic` command: the Alembic config is built in code (`presetdb.store.migrate`).
"""

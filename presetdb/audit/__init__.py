"""Audits: the read-only SQL guard, canned audits (sql/*.sql), diffs and datasette metadata."""

from presetdb.audit.core import *
from presetdb.audit.core import __all__  # noqa: F401

"""Audits: the read-only SQL guard (`readonly`), canned audits (`canned`, sql/*.sql), diffs
(`diff`) and datasette metadata (`datasette`). None of them imports torch or helion."""

from presetdb.audit.canned import Audit, SummaryRow, audits, get_audit, run_audit, running_versions, summary
from presetdb.audit.datasette import datasette_metadata, schema_docs, write_json
from presetdb.audit.diff import Diff, DiffRow, diff_databases
from presetdb.audit.readonly import QueryResult, ReadOnlyDB, check_read_only, named_params, run_sql, split_statements
from presetdb.errors import AuditError

__all__ = [
    "Audit",
    "AuditError",
    "Diff",
    "DiffRow",
    "QueryResult",
    "ReadOnlyDB",
    "SummaryRow",
    "audits",
    "check_read_only",
    "datasette_metadata",
    "diff_databases",
    "get_audit",
    "named_params",
    "run_audit",
    "run_sql",
    "running_versions",
    "schema_docs",
    "split_statements",
    "summary",
    "write_json",
]

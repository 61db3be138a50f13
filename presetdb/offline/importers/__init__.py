"""Reading tuning results into a presetdb database.

One module per format turns a file into a `ParsedFile` (a header and a lazy stream of
rows) without torch: `presetdb_results` (presetdb's own format), `vllm` (vLLM's Helion
config files), `helion_cache` (Helion's ``*.best_config``), `helion_aot` (Helion's
``tuned_configs_*.json``). `detect` picks the format, `validate` judges rows against the
kernel registry, `apply` writes them in one transaction and reports, `export` writes
files back out.
"""

from __future__ import annotations

from presetdb.offline.importers.apply import ImportReport, RowOutcome, import_files
from presetdb.offline.importers.detect import detect_format, parse_file
from presetdb.offline.importers.records import FORMATS, Format, ParsedFile, Row

__all__ = [
    "FORMATS",
    "Format",
    "ImportReport",
    "ParsedFile",
    "Row",
    "RowOutcome",
    "detect_format",
    "import_files",
    "parse_file",
]

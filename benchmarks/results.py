"""Where a benchmark's results go: its JSON record and its markdown table, each file written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

from winclip.runtime.atomic import write_atomic


def write_results(result: dict, table: str | None, json_path: Path | None, md_path: Path | None = None,
                  **dumps) -> None:
    """Write `result` as JSON to json_path and `table` to md_path, each where given; `dumps`: json.dumps's options
    (e.g. default=float for numpy numbers)."""
    if json_path is not None:
        write_atomic(json_path, (json.dumps(result, indent=2, **dumps) + "\n").encode())
    if md_path is not None and table is not None:
        write_atomic(md_path, (table + "\n").encode())

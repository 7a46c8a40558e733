"""Export ledger records for other tools: CSV (always) and Parquet (through pyarrow, a dependency).

Both stream the ledger in batches, so exporting a million records needs a batch of memory, not a million."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TextIO

from .base import Ledger, LedgerRecord

COLUMNS = [f.name for f in fields(LedgerRecord)]

PAGE = 10_000
"""Records read from the ledger at a time, and how often an export reports its progress."""


def export_csv(
    ledger: Ledger, file: str | Path | TextIO, since: float = 0.0, until: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write records as CSV with a header row to a path or an open text stream (stdout); returns how many were
    written. ``progress`` is told how many are written after every page of ``PAGE`` records and at the end."""
    if not isinstance(file, str | Path):
        return _write_csv(ledger, file, since, until, progress)
    with Path(file).open("w", newline="", encoding="utf-8") as fh:
        return _write_csv(ledger, fh, since, until, progress)


def _write_csv(
    ledger: Ledger, fh: TextIO, since: float, until: float | None, progress: Callable[[int], None] | None,
) -> int:
    n = 0
    w = csv.writer(fh)
    w.writerow(COLUMNS)
    for rec in ledger.iter_records(since, until, batch=PAGE):
        w.writerow([getattr(rec, c) for c in COLUMNS])
        n += 1
        if progress is not None and n % PAGE == 0:
            progress(n)
    fh.flush()
    if progress is not None:
        progress(n)
    return n


def parquet_available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def export_parquet(
    ledger: Ledger, file: str | Path, since: float = 0.0, until: float | None = None, batch: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write records as Parquet (typed columns, ``ts`` as float seconds since the epoch, UTC). ``progress`` is told
    how many are written after every row group of ``batch`` records and at the end."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise RuntimeError("Parquet export needs pyarrow: pip install pyarrow (or use --format csv)") from exc
    schema = pa.schema(
        [
            ("request_id", pa.string()), ("model", pa.string()), ("tier", pa.string()),
            ("energy_j", pa.float64()), ("energy_source", pa.string()), ("outcome", pa.string()),
            ("reason", pa.string()), ("input_tokens", pa.int64()), ("output_tokens", pa.int64()),
            ("latency_ms", pa.float64()), ("policy", pa.string()), ("task", pa.string()),
            ("key_hash", pa.string()), ("error", pa.string()), ("attempt", pa.int64()),
            ("co2e_g", pa.float64()), ("ts", pa.float64()), ("record_id", pa.string()),
            ("estimated_j", pa.float64()), ("grid_g_per_kwh", pa.float64()), ("zone", pa.string()),
        ]
    )  # fmt: skip
    assert schema.names == COLUMNS, "keep the Parquet schema in step with LedgerRecord"
    n = 0
    with pq.ParquetWriter(str(file), schema) as writer:
        chunk: list[LedgerRecord] = []
        for rec in ledger.iter_records(since, until, batch=batch):
            chunk.append(rec)
            if len(chunk) >= batch:
                writer.write_table(_table(pa, schema, chunk))
                n += len(chunk)
                chunk = []
                if progress is not None:
                    progress(n)
        if chunk or n == 0:
            writer.write_table(_table(pa, schema, chunk))
            n += len(chunk)
    if progress is not None:
        progress(n)
    return n


def _table(pa, schema, chunk: list[LedgerRecord]):
    return pa.table({c: [getattr(r, c) for r in chunk] for c in COLUMNS}, schema=schema)

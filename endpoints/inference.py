"""Inference tables on disk: where the captured requests of an endpoint live, writing a
batch of them, reading them back, and removing days past the retention.

Layout (Hive-style partitions, so ``pandas.read_parquet`` on an endpoint's directory
yields every row with a ``date`` column)::

    <SERVING_INFERENCE_DIR>/<endpoint>/date=YYYY-MM-DD/<time>-<pid>-<n>.parquet

One file per batch the gateway's writer flushes; files are written under a temporary name
and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings

from . import kv

# The table's columns, in order: what each captured request records.
COLUMNS = (
    "timestamp",  # when the request arrived (UTC, milliseconds)
    "endpoint",  # the registered model name
    "selector",  # what the URL named: a stage, "@alias" or a version
    "version",  # the version that answered
    "status",  # the HTTP status returned
    "latency_ms",  # time in the gateway, from admission to the answer
    "token_id",  # the caller's token (its id, never the token)
    "request",  # the request body (text; undecodable bytes replaced)
    "response",  # the answer body (text)
)


def root() -> Path:
    return Path(settings.SERVING["INFERENCE_DIR"])


def table_dir(endpoint: str) -> Path:
    """The directory of one endpoint's table (its name quoted to one path segment)."""
    return root() / quote(endpoint, safe="")


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("timestamp", pa.timestamp("ms", tz="UTC")),
            ("endpoint", pa.string()),
            ("selector", pa.string()),
            ("version", pa.string()),
            ("status", pa.int32()),
            ("latency_ms", pa.float64()),
            ("token_id", pa.int64()),
            ("request", pa.string()),
            ("response", pa.string()),
        ]
    )


def write_batch(endpoint: str, day: date, rows: Sequence[Sequence[Any]]) -> Path:
    """Write ``rows`` (tuples in ``COLUMNS`` order, timestamps as Unix seconds) as one
    Parquet file of ``endpoint``'s partition for ``day``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(zip(*rows, strict=True))
    arrays = [
        pa.array([int(t * 1000) for t in columns[0]], pa.timestamp("ms", tz="UTC")),
        *(
            pa.array(values, field.type)
            for values, field in zip(columns[1:], list(_schema())[1:], strict=True)
        ),
    ]
    table = pa.Table.from_arrays(arrays, schema=_schema())
    directory = table_dir(endpoint) / f"date={day.isoformat()}"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{int(time.time() * 1000)}-{os.getpid()}-{time.perf_counter_ns() % 10**9}"
    final = directory / f"{name}.parquet"
    partial = directory / f".{name}.parquet.partial"
    pq.write_table(table, partial, compression="zstd")
    partial.rename(final)
    return final


def _files(endpoint: str) -> list[Path]:
    """The table's files, newest partition first, newest file first within it."""
    directory = table_dir(endpoint)
    if not directory.is_dir():
        return []
    days = sorted((d for d in directory.glob("date=*") if d.is_dir()), reverse=True)
    return [f for d in days for f in sorted(d.glob("*.parquet"), reverse=True)]


def latest_rows(endpoint: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` captured rows, newest first (reads only the newest files)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in _files(endpoint):
        try:
            batch = pq.read_table(path).to_pylist()
        except (OSError, ValueError):  # removed by retention meanwhile
            continue
        rows.extend(batch)
        if len(rows) >= limit:
            break
    rows.sort(key=lambda r: r["timestamp"], reverse=True)
    return rows[:limit]


def count_rows(endpoint: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in _files(endpoint))


def as_parquet(endpoint: str, days: int) -> bytes:
    """The last ``days`` days of the table as one Parquet file (for a download)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    since = (datetime.now(UTC).date() - timedelta(days=days - 1)).isoformat()
    tables = [
        pq.read_table(path)
        for path in _files(endpoint)
        if path.parent.name.removeprefix("date=") >= since
    ]
    table = pa.concat_tables(tables) if tables else _schema().empty_table()
    buffer = io.BytesIO()
    pq.write_table(table.sort_by([("timestamp", "ascending")]), buffer, compression="zstd")
    return buffer.getvalue()


def purge(retention_days: int, *, today: date | None = None) -> list[Path]:
    """Remove every endpoint's partitions older than ``retention_days``; the removed
    directories."""
    today = today or datetime.now(UTC).date()
    oldest = (today - timedelta(days=retention_days - 1)).isoformat()
    removed = []
    if not root().is_dir():
        return removed
    for day in root().glob("*/date=*"):
        if day.is_dir() and day.name.removeprefix("date=") < oldest:
            shutil.rmtree(day, ignore_errors=True)
            removed.append(day)
    return removed


def dropped(endpoint: str) -> int:
    """Requests of ``endpoint`` the gateways had to leave out of its table (queue full)."""
    value = kv.redis_client().get(kv.capture_dropped_key(endpoint))
    return int(value or 0)

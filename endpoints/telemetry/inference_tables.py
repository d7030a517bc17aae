"""Inference tables on disk: captured requests as Parquet files, partitioned by endpoint and
day (``<SERVING_INFERENCE_DIR>/<endpoint>/date=YYYY-MM-DD/…``, docs/api.md); writing a
batch, reading rows back, the download, purging days past the retention, and counting the
requests gateways could not keep. A file is written whole or not at all (temporary name,
flush, rename); one that cannot be read is skipped by every read, logged and reported.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings

from endpoints import kv

log = logging.getLogger(__name__)

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

# Why a sampled request is missing from its table: the web process's queue was over its
# byte budget, its Parquet write failed, or the process stopped before writing it.
QUEUE_FULL = "queue_full"
WRITE_FAILED = "write_failed"
SHUTDOWN = "shutdown"
DROP_REASONS = (QUEUE_FULL, WRITE_FAILED, SHUTDOWN)

# A download gathers this much Arrow data before writing it out as one row group: the
# gateway writes many small files, and a row group per file would grow the footer (which
# the writer keeps in memory until the end) with every file of the week.
DOWNLOAD_ROW_GROUP_BYTES = 16 * 1024 * 1024

_sequence = itertools.count()


def root() -> Path:
    return Path(settings.SERVING["INFERENCE_DIR"])


def table_dir(endpoint: str) -> Path:
    """The directory of one endpoint's table (its name quoted to one path segment)."""
    return root() / quote(endpoint, safe="")


@functools.cache
def schema() -> Any:
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


# --- writing ------------------------------------------------------------------------------------


def write_batch(endpoint: str, day: date, rows: Sequence[Sequence[Any]]) -> Path:
    """Write ``rows`` (tuples in ``COLUMNS`` order, timestamps as Unix seconds) as one
    Parquet file of ``endpoint``'s partition for ``day``, durably."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(zip(*rows, strict=True))
    arrays = [
        pa.array([int(t * 1000) for t in columns[0]], pa.timestamp("ms", tz="UTC")),
        *(
            pa.array(values, field.type)
            for values, field in zip(columns[1:], list(schema())[1:], strict=True)
        ),
    ]
    table = pa.Table.from_arrays(arrays, schema=schema())
    directory = table_dir(endpoint) / f"date={day.isoformat()}"
    _make_dirs(directory)
    name = f"{int(time.time() * 1000)}-{os.getpid()}-{next(_sequence)}"
    final = directory / f"{name}.parquet"
    partial = directory / f".{name}.parquet.partial"
    try:
        with open(partial, "wb") as sink:
            pq.write_table(table, sink, compression="zstd")
            sink.flush()
            os.fsync(sink.fileno())
        partial.rename(final)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    _fsync_dir(directory)  # the rename itself survives a power cut
    return final


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each new entry flushed to disk."""
    missing = []
    path = directory
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            path.mkdir()
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ------------------------------------------------------------------------------------


@dataclass
class Rows:
    """Captured rows, and the files of the table that could not be read and were skipped
    (relative to its directory: ``date=…/….parquet``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _files(endpoint: str, *, since: str = "") -> list[Path]:
    """The table's files (of days from ``since``, ``YYYY-MM-DD``), newest partition first,
    newest file first within it."""
    directory = table_dir(endpoint)
    if not directory.is_dir():
        return []
    days = sorted(
        (
            d
            for d in directory.glob("date=*")
            if d.is_dir() and d.name.removeprefix("date=") >= since
        ),
        reverse=True,
    )
    return [f for d in days for f in sorted(d.glob("*.parquet"), reverse=True)]


def _skip(path: Path, reason: object, unreadable: list[str]) -> None:
    name = f"{path.parent.name}/{path.name}"
    log.warning("inference table %s: skipped %s: %s", path.parent.parent.name, name, reason)
    unreadable.append(name)


def _open(path: Path, unreadable: list[str]) -> Any:
    """``path`` as a ``ParquetFile`` of the table's shape, or None: noted in
    ``unreadable`` (and logged) when it cannot be read, silently when retention removed it
    meanwhile."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowIOError / ArrowInvalid
        _skip(path, exc, unreadable)
        return None
    if not file.schema_arrow.equals(schema()):
        file.close()
        _skip(path, "its columns are not the table's", unreadable)
        return None
    return file


def _row_groups(path: Path, unreadable: list[str]) -> Iterator[Any]:
    """The row groups of one file as Arrow tables; a file that fails part-way is skipped
    from there on (and noted)."""
    file = _open(path, unreadable)
    if file is None:
        return
    with file:
        for index in range(file.num_row_groups):
            try:
                group = file.read_row_group(index)
            except (OSError, ValueError) as exc:
                _skip(path, exc, unreadable)
                return
            yield group


def latest_rows(endpoint: str, limit: int) -> Rows:
    """The newest ``limit`` captured rows, newest first (reads only the newest files)."""
    found = Rows()
    for path in _files(endpoint):
        for group in _row_groups(path, found.unreadable):
            found.rows.extend(group.to_pylist())
        if len(found.rows) >= limit:
            break
    found.rows.sort(key=lambda r: r["timestamp"], reverse=True)
    del found.rows[limit:]
    return found


def count_rows(endpoint: str) -> int:
    """Rows in the table's readable files."""
    skipped: list[str] = []
    total = 0
    for path in _files(endpoint):
        file = _open(path, skipped)
        if file is not None:
            with file:
                total += file.metadata.num_rows
    return total


class _Chunks:
    """A file-like sink for the Parquet writer that hands out what was written so far."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def download(endpoint: str, days: int, *, today: date | None = None) -> Iterator[bytes]:
    """The last ``days`` days of the table as one Parquet file, produced piece by piece for
    a streamed answer: source row groups are read one at a time, gathered up to
    ``DOWNLOAD_ROW_GROUP_BYTES``, written out as a row group, and the bytes produced so far
    are yielded. Memory holds about one row group, never the table.

    Rows come in file order, oldest file first (each file in arrival order); a strict order
    across web processes is a ``sort_values("timestamp")`` after loading. Unreadable files
    are skipped and logged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    today = today or datetime.now(UTC).date()
    since = (today - timedelta(days=days - 1)).isoformat()
    sink = _Chunks()
    writer = pq.ParquetWriter(sink, schema(), compression="zstd")
    try:
        for batch in _gathered(reversed(_files(endpoint, since=since))):
            writer.write_table(pa.concat_tables(batch))
            yield sink.take()
    finally:
        writer.close()  # the footer: what makes the bytes a Parquet file
    yield sink.take()


def _gathered(paths: Iterable[Path]) -> Iterator[list[Any]]:
    """The row groups of ``paths`` in lists of about ``DOWNLOAD_ROW_GROUP_BYTES``."""
    skipped: list[str] = []
    batch: list[Any] = []
    size = 0
    for path in paths:
        for group in _row_groups(path, skipped):
            batch.append(group)
            size += group.nbytes
            if size >= DOWNLOAD_ROW_GROUP_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


# --- retention ----------------------------------------------------------------------------------


def purge(retention_days: int, *, today: date | None = None) -> list[Path]:
    """Remove every endpoint's partitions older than ``retention_days``; the removed
    directories."""
    today = today or datetime.now(UTC).date()
    oldest = (today - timedelta(days=retention_days - 1)).isoformat()
    removed: list[Path] = []
    if not root().is_dir():
        return removed
    for day in root().glob("*/date=*"):
        if day.is_dir() and day.name.removeprefix("date=") < oldest:
            shutil.rmtree(day, ignore_errors=True)
            removed.append(day)
    return removed


# --- requests left out --------------------------------------------------------------------------


def add_dropped(counts: Mapping[tuple[str, str], int]) -> None:
    """Add to the running counts of requests left out, by ``(endpoint, reason)``
    (raises ``RedisError``)."""
    pipe = kv.redis_client().pipeline(transaction=False)
    for (endpoint, reason), count in counts.items():
        pipe.hincrby(kv.capture_dropped_key(endpoint), reason, count)
    pipe.execute()


def dropped_counts(endpoints: Sequence[str]) -> dict[str, dict[str, int]]:
    """For each endpoint, the requests left out of its table by reason (one round trip)."""
    pipe = kv.redis_client().pipeline(transaction=False)
    for endpoint in endpoints:
        pipe.hgetall(kv.capture_dropped_key(endpoint))
    return {
        endpoint: {reason: int(fields.get(reason.encode(), 0)) for reason in DROP_REASONS}
        for endpoint, fields in zip(endpoints, pipe.execute(), strict=True)
    }


def dropped(endpoint: str) -> int:
    """Requests of ``endpoint`` the gateways had to leave out of its table, all reasons."""
    return sum(dropped_counts([endpoint])[endpoint].values())

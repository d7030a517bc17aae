"""The gateway's capture of scoring requests and the inference tables on disk: sampling,
the queue's byte budget, the Parquet files it writes (durably) and what pandas reads back,
counting what it drops by reason, the last write as a process stops, skipping unreadable
files, the streamed download, and removing days past the retention. No Redis, gateway,
worker or replica: rows are offered directly and the writer's flush is called by the test
(the counts in Redis and /metrics: ``tests/integration/telemetry/test_metrics.py``)."""

from __future__ import annotations

import io
import logging
import os
import threading
from datetime import UTC, date, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from endpoints import tasks
from endpoints.gateway import capture as capture_module
from endpoints.gateway.capture import Capture
from endpoints.telemetry import inference_tables
from tests.support.capture import ROW_BYTES, offer


@pytest.fixture
def table_dir(tmp_path, settings):
    settings.SERVING = {
        **settings.SERVING,
        "INFERENCE_DIR": tmp_path / "inference",
        "CAPTURE_QUEUE_BYTES": 10 * ROW_BYTES,
    }
    return tmp_path / "inference"


def row(ts: float = 0.0, request: str = "") -> tuple:
    return (ts, "iris", "1", "1", 200, 1.0, 1, request, "")


def today() -> date:
    return datetime.now(UTC).date()


def test_rows_are_written_as_parquet_that_pandas_reads(table_dir):
    capture = Capture(writer=False)
    for i in range(8):
        offer(capture, i=i)
    assert capture.flush() == 8
    table = pd.read_parquet(inference_tables.table_dir("iris"))
    assert len(table) == 8
    assert list(table.columns[: len(inference_tables.COLUMNS)]) == list(inference_tables.COLUMNS)
    assert sorted(table["request"]) == sorted(f'{{"inputs": [{i}]}}' for i in range(8))
    assert set(table["token_id"]) == {7}
    assert str(table["timestamp"].dt.tz) == "UTC"
    [partition] = list(inference_tables.table_dir("iris").glob("date=*"))
    assert partition.name == f"date={table['timestamp'].iloc[0].date().isoformat()}"
    assert inference_tables.latest_rows("iris", 3).rows[0]["version"] == "2"
    assert inference_tables.count_rows("iris") == 8
    assert capture.queued_bytes == 0


def test_the_queue_is_bounded_in_bytes_not_rows(table_dir):
    capture = Capture(writer=False)
    # One request larger than the whole budget is left out though the queue is empty.
    offer(capture, request=b"x" * (10 * ROW_BYTES))
    assert (capture.dropped_total, capture.queued_bytes) == (1, 0)
    for i in range(25):
        offer(capture, i=i)
    assert capture.queued_bytes == 10 * ROW_BYTES
    assert capture.dropped_total == 1 + 15
    assert capture.flush() == 10
    assert capture.queued_bytes == 0
    offer(capture)  # room again once the writer emptied it
    assert capture.dropped_total == 16


def test_a_row_holds_its_bytes_until_its_write_is_done(table_dir, monkeypatch):
    """What the writer is writing still counts: the budget bounds the queue and the batch
    in the writer's hands together."""
    capture = Capture(writer=False)
    for i in range(10):
        offer(capture, i=i)
    seen = []

    def write_batch(endpoint, day, rows):
        offer(capture)  # a request arriving during the write
        seen.append(capture.queued_bytes)

    monkeypatch.setattr(inference_tables, "write_batch", write_batch)
    capture.flush()
    assert seen == [10 * ROW_BYTES]
    assert capture.dropped_total == 1
    assert capture.queued_bytes == 0


@pytest.mark.parametrize(("rate", "kept"), [(0.0, 0), (1.0, 10)])
def test_the_sampling_rate_decides_what_is_kept(table_dir, rate, kept):
    capture = Capture(writer=False)
    for i in range(10):
        offer(capture, rate=rate, i=i)
    assert capture.flush() == kept


def test_a_rate_in_between_keeps_about_that_share(table_dir, settings):
    settings.SERVING = {**settings.SERVING, "CAPTURE_QUEUE_BYTES": 100_000 * ROW_BYTES}
    capture = Capture(writer=False)
    for i in range(20_000):
        offer(capture, rate=0.25, i=i)
    assert 0.23 <= capture.flush() / 20_000 <= 0.27


def test_a_write_that_fails_counts_its_rows_as_dropped(table_dir):
    table_dir.mkdir(parents=True)
    (table_dir / "iris").write_text("a file where the table's directory should be")
    capture = Capture(writer=False)
    for i in range(3):
        offer(capture, i=i)
    assert capture.flush() == 0
    assert capture.dropped_total == 3
    assert capture._dropped == {("iris", inference_tables.WRITE_FAILED): 3}
    assert capture.queued_bytes == 0
    assert not list(table_dir.rglob("*.partial"))


# --- the last write, as the process stops ------------------------------------------------------


def test_closing_writes_what_is_queued_and_counts_later_requests_as_lost(table_dir):
    capture = Capture(writer=False)
    for i in range(4):
        offer(capture, i=i)
    capture._report = lambda: True  # no Redis here: the counts stay in memory
    capture.close()
    assert inference_tables.count_rows("iris") == 4
    offer(capture)
    assert capture._dropped == {("iris", inference_tables.SHUTDOWN): 1}


def test_closing_stops_the_writer_thread_after_its_last_write(table_dir, settings):
    settings.SERVING = {**settings.SERVING, "CAPTURE_FLUSH_SECONDS": 3600}
    capture = Capture()
    for i in range(5):
        offer(capture, i=i)  # starts this process's writer, which would wait an hour
    capture._report = lambda: True
    assert capture in capture_module._running
    capture_module.close_all()
    assert not capture._thread.is_alive()
    assert inference_tables.count_rows("iris") == 5
    assert capture.dropped_total == 0


def test_rows_a_hung_write_holds_are_counted_as_lost_at_shutdown(table_dir, monkeypatch):
    entered, release = threading.Event(), threading.Event()

    def hung_write(endpoint, day, rows):
        entered.set()
        release.wait(30)

    monkeypatch.setattr(inference_tables, "write_batch", hung_write)
    capture = Capture()
    capture.flush_seconds = 0.0
    capture._report = lambda: True
    for i in range(3):
        offer(capture, i=i)
    assert entered.wait(30)
    for i in range(2):
        offer(capture, i=i)  # queued behind the hung write
    try:
        capture.close(timeout=0.2)
        assert capture._dropped == {("iris", inference_tables.SHUTDOWN): 5}
    finally:
        release.set()
        capture._thread.join(30)


# --- on disk ------------------------------------------------------------------------------------


def test_a_batch_is_flushed_to_disk_before_and_after_its_rename(table_dir, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = inference_tables.write_batch("iris", today(), [row()])
    partition = path.parent
    partial = str(partition / f".{path.stem}.parquet.partial")
    # The file's data before it takes its name, then the name; and each new directory.
    assert synced.index(partial) < synced.index(str(partition))
    assert str(table_dir) in synced and str(partition.parent) in synced
    synced.clear()
    inference_tables.write_batch("iris", today(), [row()])
    assert len(synced) == 2  # the partition exists now: the file and its rename only


def test_unreadable_files_are_skipped_reported_and_logged(table_dir, caplog):
    good = inference_tables.write_batch("iris", today(), [row(1.0, "good")])
    partition = good.parent
    (partition / "0-garbage.parquet").write_bytes(b"not parquet at all")
    (partition / "1-truncated.parquet").write_bytes(good.read_bytes()[:40])
    pq.write_table(pa.table({"other": [1]}), partition / "2-foreign.parquet")
    caplog.set_level(logging.WARNING, logger="endpoints.telemetry.inference_tables")

    found = inference_tables.latest_rows("iris", 10)
    assert [r["request"] for r in found.rows] == ["good"]
    day = partition.name
    assert sorted(found.unreadable) == [
        f"{day}/0-garbage.parquet",
        f"{day}/1-truncated.parquet",
        f"{day}/2-foreign.parquet",
    ]
    assert "0-garbage.parquet" in caplog.text and "2-foreign.parquet" in caplog.text
    assert inference_tables.count_rows("iris") == 1
    downloaded = pd.read_parquet(io.BytesIO(b"".join(inference_tables.download("iris", 7))))
    assert list(downloaded["request"]) == ["good"]


def test_the_download_is_produced_file_by_file(table_dir, monkeypatch):
    monkeypatch.setattr(inference_tables, "DOWNLOAD_ROW_GROUP_BYTES", 1)
    for i in range(3):
        inference_tables.write_batch(
            "iris", today(), [row(float(i), f"r{i}"), row(float(i), f"s{i}")]
        )
    inference_tables.write_batch("iris", date(2020, 1, 1), [row(0.0, "too old")])
    opened: list[str] = []
    real_open = inference_tables._open

    def spy(path, unreadable):
        opened.append(path.name)
        return real_open(path, unreadable)

    monkeypatch.setattr(inference_tables, "_open", spy)
    chunks = inference_tables.download("iris", 7)
    first = next(chunks)
    assert len(opened) == 1  # one file read, its bytes already on their way
    data = first + b"".join(chunks)
    assert len(opened) == 3
    parquet = pq.ParquetFile(io.BytesIO(data))
    assert parquet.num_row_groups == 3
    table = parquet.read().to_pandas()
    assert list(table["request"]) == ["r0", "s0", "r1", "s1", "r2", "s2"]
    assert str(table["timestamp"].dt.tz) == "UTC"


def test_a_download_of_an_empty_table_is_a_parquet_file_without_rows(table_dir):
    downloaded = pd.read_parquet(io.BytesIO(b"".join(inference_tables.download("other", 7))))
    assert len(downloaded) == 0
    assert list(downloaded.columns) == list(inference_tables.COLUMNS)


# --- retention ----------------------------------------------------------------------------------


def test_days_past_the_retention_are_removed(table_dir):
    for day in ("2026-11-01", "2026-11-28", "2026-11-30"):
        inference_tables.write_batch("iris", date.fromisoformat(day), [row()])
    removed = inference_tables.purge(3, today=date(2026, 11, 30))
    assert [p.name for p in removed] == ["date=2026-11-01"]
    left = sorted(p.name for p in inference_tables.table_dir("iris").glob("date=*"))
    assert left == ["date=2026-11-28", "date=2026-11-30"]


def test_celery_beat_purges_old_days_whether_or_not_anything_is_captured(table_dir, settings):
    from serving_ui.celery import app

    settings.SERVING = {**settings.SERVING, "INFERENCE_RETENTION_DAYS": 2}
    inference_tables.write_batch("quiet", date(2020, 1, 1), [row()])
    inference_tables.write_batch("quiet", today(), [row()])
    app.finalize()
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "endpoints.tasks.purge_inference_tables" in scheduled
    tasks.purge_inference_tables()
    left = [p.name for p in inference_tables.table_dir("quiet").glob("date=*")]
    assert left == [f"date={today().isoformat()}"]

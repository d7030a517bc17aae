"""The gateway's capture of scoring requests (one module): sampling, the bounded queue,
the Parquet files it writes and what pandas reads back, counting what it drops, and
removing days past the retention. No gateway, worker or replica: rows are offered
directly and the writer's flush is called by the test."""

from __future__ import annotations

import io
from datetime import date

import pandas as pd
import pytest

from endpoints import inference
from endpoints.gateway.capture import Capture


@pytest.fixture
def table_dir(tmp_path, settings):
    settings.SERVING = {
        **settings.SERVING,
        "INFERENCE_DIR": tmp_path / "inference",
        "CAPTURE_QUEUE_SIZE": 10,
    }
    return tmp_path / "inference"


def offer(capture: Capture, rate: float = 1.0, i: int = 0, endpoint: str = "iris") -> None:
    capture.offer(
        rate,
        endpoint=endpoint,
        selector="@champion",
        version="2",
        status=200,
        latency_ms=1.5,
        token_id=7,
        request=b'{"inputs": [%d]}' % i,
        response=b'{"predictions": [0]}',
    )


def test_rows_are_written_as_parquet_that_pandas_reads(table_dir):
    capture = Capture(writer=False)
    for i in range(8):
        offer(capture, i=i)
    assert capture.flush() == 8
    table = pd.read_parquet(inference.table_dir("iris"))
    assert len(table) == 8
    assert list(table.columns[: len(inference.COLUMNS)]) == list(inference.COLUMNS)
    assert sorted(table["request"]) == sorted(f'{{"inputs": [{i}]}}' for i in range(8))
    assert set(table["token_id"]) == {7}
    assert str(table["timestamp"].dt.tz) == "UTC"
    [partition] = list(inference.table_dir("iris").glob("date=*"))
    assert partition.name == f"date={table['timestamp'].iloc[0].date().isoformat()}"
    assert inference.latest_rows("iris", 3)[0]["version"] == "2"
    assert inference.count_rows("iris") == 8


def test_a_full_queue_drops_and_counts_without_raising(table_dir):
    capture = Capture(writer=False)
    for i in range(25):
        offer(capture, i=i)
    assert capture.dropped_total == 15
    assert capture.flush() == 10
    offer(capture)  # room again once the writer emptied it
    assert capture.dropped_total == 15


@pytest.mark.parametrize(("rate", "kept"), [(0.0, 0), (1.0, 10)])
def test_the_sampling_rate_decides_what_is_kept(table_dir, rate, kept):
    capture = Capture(writer=False)
    for i in range(10):
        offer(capture, rate=rate, i=i)
    assert capture.flush() == kept


def test_a_rate_in_between_keeps_about_that_share(table_dir, settings):
    settings.SERVING = {**settings.SERVING, "CAPTURE_QUEUE_SIZE": 100_000}
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


def test_days_past_the_retention_are_removed(table_dir):
    for day in ("2026-11-01", "2026-11-28", "2026-11-30"):
        inference.write_batch(
            "iris", date.fromisoformat(day), [(0.0, "iris", "1", "1", 200, 1.0, 1, "", "")]
        )
    removed = inference.purge(3, today=date(2026, 11, 30))
    assert [p.name for p in removed] == ["date=2026-11-01"]
    left = sorted(p.name for p in inference.table_dir("iris").glob("date=*"))
    assert left == ["date=2026-11-28", "date=2026-11-30"]


def test_a_download_is_one_parquet_file_of_the_recent_days(table_dir):
    capture = Capture(writer=False)
    for i in range(4):
        offer(capture, i=i)
    capture.flush()
    assert len(pd.read_parquet(io.BytesIO(inference.as_parquet("iris", 7)))) == 4
    assert len(pd.read_parquet(io.BytesIO(inference.as_parquet("other", 7)))) == 0

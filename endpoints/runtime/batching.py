"""Micro-batching of a replica's scoring requests: which requests may merge
(``request_shape``), and when a batch leaves (``MicroBatcher``: at ``max_size`` rows, or
once its first request waited ``max_wait_ms``). Off unless a stage's compute config asks
for it: merging is only correct for a model that answers each row independently. The app
(``replica_app``) parses, predicts and encodes with MLflow's own functions; this module
imports only the standard library, so provisioning uses ``BatchSettings`` without MLflow.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_MAX_SIZE = "SERVING_BATCH_MAX_SIZE"
ENV_MAX_WAIT_MS = "SERVING_BATCH_MAX_WAIT_MS"
JSON_CONTENT_TYPE = "application/json"
ROW_FORMATS = ("dataframe_records", "inputs", "instances")
# Larger bodies are not merged: they are decoded on the event loop to be looked at, which
# would stall every other request, and a request that size gains little from company.
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class BatchSettings:
    max_size: int
    max_wait_ms: int

    def env(self) -> dict[str, str]:
        """The replica environment that turns these settings on."""
        return {ENV_MAX_SIZE: str(self.max_size), ENV_MAX_WAIT_MS: str(self.max_wait_ms)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BatchSettings | None:
        """The settings in ``environ``; None (batching off) when they are absent.

        Raises ValueError for values that are not whole numbers in range, so a replica
        never silently serves with settings nobody asked for."""
        size, wait = environ.get(ENV_MAX_SIZE), environ.get(ENV_MAX_WAIT_MS)
        if not size and not wait:
            return None
        settings = cls(int(size or ""), int(wait or ""))
        if settings.max_size < 1 or settings.max_wait_ms < 0:
            raise ValueError(f"invalid batching settings: {settings}")
        return settings


@dataclass(frozen=True)
class Shape:
    """What a mergeable request is: its merge key, its rows and its decoded JSON."""

    key: tuple[str, ...]
    rows: int
    payload: dict[str, Any] = field(compare=False)


def request_shape(body: bytes, content_type: str | None) -> Shape | None:
    """The request's shape when it may be merged with others, else None: JSON of at most
    ``MAX_BODY_BYTES`` with exactly one format key (``dataframe_split`` with ``columns`` and
    ``data`` only, ``dataframe_records``, or an ``inputs``/``instances`` list), at least one
    row, optionally ``params``. Requests merge only when their keys are equal: the same
    format, the same ``columns``, identical ``params``."""
    if content_type != JSON_CONTENT_TYPE or len(body) > MAX_BODY_BYTES:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None  # MLflow's path words the error
    if not isinstance(payload, dict):
        return None
    formats = [key for key in payload if key != "params"]
    if len(formats) != 1:
        return None
    found = _rows(formats[0], payload[formats[0]])
    if found is None:
        return None
    rows, columns = found
    params = json.dumps(payload["params"], sort_keys=True) if "params" in payload else ""
    return Shape((formats[0], columns, params), rows, payload)


def _rows(name: str, value: Any) -> tuple[int, str] | None:
    """(row count, canonical columns) of one format's value; None when it is not merged."""
    if name == "dataframe_split":
        # An ``index`` is not merged: the rows of a merged frame are renumbered.
        if not isinstance(value, dict) or value.keys() != {"columns", "data"}:
            return None
        columns, data = value["columns"], value["data"]
        if not isinstance(columns, list) or not isinstance(data, list) or not data:
            return None
        return len(data), json.dumps(columns)
    if name in ROW_FORMATS and isinstance(value, list) and value:
        return len(value), ""
    return None


@dataclass
class Pending:
    shape: Shape
    body: bytes
    future: asyncio.Future[Any]


@dataclass
class _Batch:
    key: tuple[str, ...]
    items: list[Pending] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


RunBatch = Callable[[list[Pending]], Awaitable[list[Any]]]


class MicroBatcher:
    """Collects concurrent requests into batches and hands each batch to ``run``, which
    answers every request of it (in order). One batch is open per merge key; a request that
    would overflow it sends it off and opens the next."""

    def __init__(self, settings: BatchSettings, run: RunBatch) -> None:
        self.settings = settings
        self.run = run
        self._open: dict[tuple[str, ...], _Batch] = {}
        # Running batches, referenced so that the event loop does not collect them.
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, shape: Shape, body: bytes) -> Any:
        """The answer to this request, once its batch has run."""
        loop = asyncio.get_running_loop()
        pending = Pending(shape, body, loop.create_future())
        batch = self._open.get(shape.key)
        if batch is not None and batch.rows + shape.rows > self.settings.max_size:
            self._send(batch)
            batch = None
        if batch is None:
            batch = self._open[shape.key] = _Batch(shape.key)
            batch.timer = loop.call_later(self.settings.max_wait_ms / 1000, self._send, batch)
        batch.items.append(pending)
        batch.rows += shape.rows
        if batch.rows >= self.settings.max_size:
            self._send(batch)
        return await pending.future

    def _send(self, batch: _Batch) -> None:
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._answer(batch.items))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, items: list[Pending]) -> None:
        try:
            answers = await self.run(items)
        except Exception as exc:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, answer in zip(items, answers, strict=True):
            # A caller that timed out has stopped waiting: its future is cancelled.
            if not item.future.done():
                item.future.set_result(answer)

"""The journal: every command, answer and decision in SQLite, and recovery after a crash.

One SQLite file in WAL mode (``[service] journal``; by default journal.sqlite in
systemd's $STATE_DIRECTORY or beside the deployment file). It is the daemon's
history, its audit trail and its memory across restarts; the process itself
keeps none.

Tables (schema version 1; every row has the ``boot_id`` of the process that
wrote it and a UTC ``time``):

- ``boots``: one row per start: boot id, start and end, whether it ended cleanly.
- ``commands``: every request, update and cancel, written *before* it goes to the
  controller (write-ahead), with the ``actor`` that caused it (the planner, or an
  operator's name from the operators' interface).
- ``answers``: every controller answer to a command, every failed call, and each
  change of what a poll reports.
- ``events``: the planner's transitions (armed, due, requested, granted,
  completed, cancelled, stale, timeout, rejected, unconfirmed, recovered, ...).
- ``notes``: inputs that change a run: emergency status on and off, a unit
  offline, a status dropped as out of order, and who gave them (``actor``).
- ``positions``: matched positions of vehicles on a run, about one a second.
- ``requests``: one row per request id with when it was opened, last sent, how
  long the controller holds it, and when its cancel was sent and confirmed.
  A row without ``closed`` is a request some controller may still hold.

Recovery: :meth:`Journal.leftovers` gives the requests earlier processes left
open; the daemon hands them to the planner, which re-asserts each under its own
id if its vehicle is heard on its run within ``recovery_grace_s`` and cancels it
otherwise; the cancel's answer closes the row. So after ``kill -9`` the journal
says what was asked and shows it taken back.

Writes: a command commits at once (with whatever else is waiting); the rest is
buffered and committed by :meth:`flush` about once a second. A failed write (a
full disk) is counted and logged, and never stops the daemon: taking requests
back matters more than the record of it. Rows older than
``journal_retention_days`` are pruned (:meth:`prune`, hourly from the daemon).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from preemption.decisions.planner import HeldRequest, PlannerEvent
from preemption.kernel.clock import Clock
from preemption.kernel.errors import JournalError
from preemption.kernel.model import Command, CommandKind, RoutePosition
from preemption.service.events import Answer, Note

__all__ = ["SCHEMA_VERSION", "Journal", "new_boot_id"]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
MAX_BUFFERED: Final = 50_000  # rows waiting for a flush; beyond this they are flushed at once
_LOG_EVERY_S: Final = 60.0  # a failing disk is logged at most this often

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS boots (
    boot_id TEXT PRIMARY KEY, started REAL NOT NULL, ended REAL, clean INTEGER,
    pid INTEGER, host TEXT, deployment TEXT);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL,
    request_id TEXT NOT NULL, vehicle TEXT, intersection TEXT NOT NULL, controller TEXT NOT NULL,
    approach TEXT, eta_s REAL, duration_s REAL, priority TEXT, reason TEXT,
    actor TEXT NOT NULL DEFAULT 'planner');
CREATE INDEX IF NOT EXISTS commands_time ON commands (time);
CREATE INDEX IF NOT EXISTS commands_request ON commands (request_id);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL, time REAL NOT NULL, controller TEXT NOT NULL,
    intersection TEXT NOT NULL, request_id TEXT, call TEXT NOT NULL, status TEXT, error TEXT,
    latency_s REAL);
CREATE INDEX IF NOT EXISTS answers_time ON answers (time);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL, time REAL NOT NULL, vehicle TEXT,
    intersection TEXT, request_id TEXT, what TEXT NOT NULL, why TEXT,
    actor TEXT NOT NULL DEFAULT 'planner');
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL, time REAL NOT NULL, what TEXT NOT NULL,
    vehicle TEXT, detail TEXT, actor TEXT);
CREATE INDEX IF NOT EXISTS notes_time ON notes (time);
CREATE TABLE IF NOT EXISTS positions (
    id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL, time REAL NOT NULL, vehicle TEXT NOT NULL,
    route TEXT, committed TEXT, distance_m REAL, speed REAL, offset_m REAL, confidence REAL,
    on_route INTEGER);
CREATE INDEX IF NOT EXISTS positions_vehicle_time ON positions (vehicle, time);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, boot_id TEXT NOT NULL, intersection TEXT NOT NULL,
    controller TEXT NOT NULL, approach TEXT, vehicle TEXT, opened REAL NOT NULL,
    last_sent REAL, duration_s REAL, cancel_sent REAL, closed REAL, close_reason TEXT);
CREATE INDEX IF NOT EXISTS requests_open ON requests (closed);
"""

_TIMED_TABLES: Final = ("commands", "answers", "events", "notes", "positions")


def new_boot_id() -> str:
    """Eight hex digits, random: part of every request id of one process."""
    return secrets.token_hex(4)


class Journal:
    """The journal of one daemon process (an :class:`~preemption.service.events.EventSink`)."""

    def __init__(
        self,
        path: Path | str,
        clock: Clock,
        *,
        retention_days: int = 90,
        deployment: str = "",
        boot_id: str | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        self.path = str(path)
        self.clock = clock
        self.retention_days = retention_days
        self.boot_id = boot_id or new_boot_id()
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._buffer: list[tuple[str, tuple[Any, ...]]] = []
        self._last_logged = -_LOG_EVERY_S
        self._db = self._open()
        with self._opening("start a boot in"):
            self._db.execute(
                "INSERT INTO boots (boot_id, started, pid, host, deployment) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.boot_id, clock.now(), os.getpid(), socket.gethostname(), deployment),
            )

    # -- opening -------------------------------------------------------------------------

    @contextmanager
    def _opening(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(
                f"cannot {what} the journal {self.path}: {exc}; check that its directory exists "
                "and is writable by the daemon's user, that the disk has room, and that the file "
                "is a journal of this program ([service] journal in the deployment file)"
            ) from None

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise JournalError(
                    f"cannot open the journal {self.path}: the directory {parent} does not exist; "
                    "create it (owned by the daemon's user) or set [service] journal"
                )
        with self._opening("open"):
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # WAL with NORMAL: a commit survives the process being killed (kill -9, a crash),
            # not a power cut of the last second; fsync per command would cost milliseconds.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=2000")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {row[0]}, this program writes version {SCHEMA_VERSION}"
                )
        return db

    # -- recovery ------------------------------------------------------------------------

    def leftovers(self) -> list[HeldRequest]:
        """Requests earlier processes left open (no confirmed cancel), oldest first."""
        with self._opening("read"):
            rows = self._db.execute(
                "SELECT request_id, intersection, controller, approach, vehicle, opened "
                "FROM requests WHERE closed IS NULL AND boot_id != ? ORDER BY opened",
                (self.boot_id,),
            ).fetchall()
        return [HeldRequest(r[0], r[1], r[2], r[3] or "", r[4] or "", float(r[5])) for r in rows]

    # -- the sink ------------------------------------------------------------------------

    def planner_event(self, event: PlannerEvent) -> None:
        self._queue(
            "INSERT INTO events (boot_id, time, vehicle, intersection, request_id, what, why) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.boot_id,
                event.time,
                event.vehicle,
                event.intersection,
                event.request_id,
                event.what,
                event.why,
            ),
        )

    def command(self, cmd: Command, actor: str = "planner") -> None:
        self._queue(
            "INSERT INTO commands (boot_id, time, kind, request_id, vehicle, intersection, "
            "controller, approach, eta_s, duration_s, priority, reason, actor) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.boot_id,
                cmd.time,
                cmd.kind.value,
                cmd.request_id,
                cmd.vehicle,
                cmd.intersection,
                cmd.controller,
                cmd.approach,
                cmd.eta_s,
                cmd.duration_s,
                cmd.priority,
                cmd.reason,
                actor,
            ),
        )
        if cmd.kind is CommandKind.CANCEL:
            self._queue(
                "UPDATE requests SET cancel_sent = ?, close_reason = ? WHERE request_id = ?",
                (cmd.time, cmd.reason, cmd.request_id),
            )
        else:
            # The first command of an id opens its row; a re-assertion of an older
            # process's request keeps that row (and its opening time).
            self._queue(
                "INSERT INTO requests (request_id, boot_id, intersection, controller, approach, "
                "vehicle, opened, last_sent, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (request_id) DO UPDATE SET last_sent = excluded.last_sent, "
                "duration_s = excluded.duration_s, vehicle = excluded.vehicle",
                (
                    cmd.request_id,
                    self.boot_id,
                    cmd.intersection,
                    cmd.controller,
                    cmd.approach,
                    cmd.vehicle,
                    cmd.time,
                    cmd.time,
                    cmd.duration_s,
                ),
            )
        self.flush()  # write-ahead: on disk before the controller is asked

    def answer(self, answer: Answer) -> None:
        self._queue(
            "INSERT INTO answers (boot_id, time, controller, intersection, request_id, call, "
            "status, error, latency_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.boot_id,
                answer.time,
                answer.controller,
                answer.intersection,
                answer.request_id,
                answer.call,
                answer.status,
                answer.error,
                answer.latency_s,
            ),
        )
        if answer.call == CommandKind.CANCEL.value and answer.error is None:
            self._queue(
                "UPDATE requests SET closed = ? WHERE request_id = ? AND closed IS NULL",
                (answer.time, answer.request_id),
            )

    def position(self, pos: RoutePosition) -> None:
        self._queue(
            "INSERT INTO positions (boot_id, time, vehicle, route, committed, distance_m, speed, "
            "offset_m, confidence, on_route) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.boot_id,
                pos.time,
                pos.vehicle,
                pos.route,
                pos.committed,
                pos.distance_m,
                pos.speed,
                pos.offset_m,
                pos.confidence,
                int(pos.on_route),
            ),
        )

    def note(self, note: Note, actor: str = "") -> None:
        self._queue(
            "INSERT INTO notes (boot_id, time, what, vehicle, detail, actor) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self.boot_id, note.time, note.what, note.vehicle, note.detail, actor),
        )

    # -- writing -------------------------------------------------------------------------

    def _queue(self, sql: str, params: tuple[Any, ...]) -> None:
        self._buffer.append((sql, params))
        if len(self._buffer) >= MAX_BUFFERED:
            self.flush()

    def flush(self) -> None:
        """Commit what is buffered, in one transaction. Never raises."""
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []

        def write() -> int:
            for sql, params in rows:
                self._db.execute(sql, params)
            return len(rows)

        if self._transaction(write, rows=len(rows)) is not None:
            self.counters["journal_rows"] += len(rows)

    def _transaction(self, work: Callable[[], int], rows: int) -> int | None:
        """``work`` in one transaction; its result, or None when the write failed."""
        try:
            self._db.execute("BEGIN")
            done = work()
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed(exc, rows)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            return None
        return done

    def _failed(self, exc: sqlite3.Error, rows: int) -> None:
        self.counters["journal_write_failed"] += 1
        self.counters["journal_rows_lost"] += rows
        now = self.clock.monotonic()
        if now - self._last_logged >= _LOG_EVERY_S:
            self._last_logged = now
            log.error(
                "journal %s: cannot write (%s); %d rows lost so far. The daemon goes on and "
                "still takes every request back, but nothing is recorded: free disk space or "
                "fix the journal's permissions",
                self.path,
                exc,
                self.counters["journal_rows_lost"],
            )

    def prune(self) -> int:
        """Delete what is older than the retention; returns the rows deleted. Never raises."""
        self.flush()
        cutoff = self.clock.now() - self.retention_days * 86_400.0

        def delete() -> int:
            n = 0
            for table in _TIMED_TABLES:
                n += self._db.execute(f"DELETE FROM {table} WHERE time < ?", (cutoff,)).rowcount
            n += self._db.execute(
                "DELETE FROM requests WHERE closed IS NOT NULL AND closed < ?", (cutoff,)
            ).rowcount
            n += self._db.execute(
                "DELETE FROM boots WHERE ended IS NOT NULL AND ended < ?", (cutoff,)
            ).rowcount
            return n

        return self._transaction(delete, rows=0) or 0

    def close(self, clean: bool = True) -> None:
        """Flush, note the end of this boot, and close the file."""
        self.flush()
        try:
            self._db.execute(
                "UPDATE boots SET ended = ?, clean = ? WHERE boot_id = ?",
                (self.clock.now(), int(clean), self.boot_id),
            )
            self._db.close()
        except sqlite3.Error as exc:
            self._failed(exc, 0)

    # -- reading (tests, and the operators' reports) -------------------------------------

    def rows(self, table: str, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row of ``table`` (``where`` an SQL condition with ``?`` placeholders), by id."""
        if table not in {*_TIMED_TABLES, "requests", "boots", "meta"}:
            raise ValueError(f"no journal table {table!r}")
        self.flush()
        order = " ORDER BY rowid"
        sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + order
        return [dict(r) for r in self._db.execute(sql, tuple(params)).fetchall()]

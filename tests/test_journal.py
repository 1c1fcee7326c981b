"""The journal: write-ahead commands, recovery of a crashed process's requests, retention,
and a full disk that must not stop the daemon."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from preemption.decisions.planner import Planner
from preemption.kernel.clock import SimClock
from preemption.kernel.config import ServiceConfig
from preemption.kernel.errors import JournalError
from preemption.kernel.model import Command, CommandKind, Fix
from preemption.service.daemon import Daemon
from preemption.service.events import Answer
from preemption.service.journal import Journal
from routes.matcher import RouteMatcher

from .helpers import VEHICLE, fix_at
from .test_daemon import Peer, peers, run_until, wait
from .test_planner import CFG, ROUTES


def _cmd(kind: CommandKind, rid: str, t: float, inter: str = "K1") -> Command:
    return Command(kind, rid, VEHICLE, inter, f"C-{inter}", "1", t, 20.0, 60.0, "fire", "test")


def _daemon(clock: SimClock, journal: Journal, ps: dict[str, Peer]) -> Daemon:
    planner = Planner(
        [mr.route for mr in ROUTES],
        CFG,
        clock,
        {VEHICLE: "fire"},
        on_event=journal.planner_event,
        id_prefix=f"{journal.boot_id}:",
    )
    planner.set_emergency(VEHICLE, True)
    return Daemon(
        clock=clock,
        planner=planner,
        matcher_for=lambda v: RouteMatcher(v, ROUTES),
        adapters=ps,
        config=ServiceConfig(),
        sink=journal,
    )


def test_a_command_is_on_disk_before_the_controller_is_asked(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    clock = SimClock()
    journal = Journal(path, clock)
    seen: list[int] = []

    class Witness(Peer):
        async def _command(self, cmd: Command) -> object:  # type: ignore[override]
            # Another process (a crash's successor) reading the file at this instant.
            with sqlite3.connect(path) as other:
                seen.append(
                    other.execute(
                        "SELECT COUNT(*) FROM commands WHERE request_id = ?", (cmd.request_id,)
                    ).fetchone()[0]
                )
            return await super()._command(cmd)

        request = update = cancel = _command  # type: ignore[assignment]

    ps = {cid: Witness(cid, clock) for cid in peers(clock)}
    daemon = _daemon(clock, journal, ps)  # type: ignore[arg-type]

    async def drive() -> AsyncIterator[Fix]:
        for k in range(60):
            yield fix_at(ROUTES, "R1", 13.0 * k, clock.now())
            await clock.sleep(1.0)

    clock.run(daemon.run([drive()]))
    assert seen
    assert all(n >= 1 for n in seen)
    journal.close()


def test_requests_left_open_by_a_killed_process_are_taken_back_by_the_next(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    clock = SimClock()
    crashed = Journal(path, clock)
    rid = f"{crashed.boot_id}:K1/1/1"
    crashed.command(_cmd(CommandKind.REQUEST, rid, clock.now()))
    crashed.answer(Answer(clock.now(), "C-K1", "K1", rid, "request", "entering", None, 0.01))
    closed_rid = f"{crashed.boot_id}:K2/1/2"
    crashed.command(_cmd(CommandKind.REQUEST, closed_rid, clock.now(), "K2"))
    crashed.command(_cmd(CommandKind.CANCEL, closed_rid, clock.now(), "K2"))
    crashed.answer(
        Answer(clock.now(), "C-K2", "K2", closed_rid, "cancel", "not_active", None, 0.01)
    )
    crashed.flush()  # no close(): the process was killed

    clock.advance(3.0)  # systemd restarts it
    restart = clock.monotonic()
    journal = Journal(path, clock)
    assert journal.boot_id != crashed.boot_id
    left = journal.leftovers()
    assert [h.request_id for h in left] == [rid]
    assert left[0].opened_utc == pytest.approx(clock.now() - 3.0)
    ps = peers(clock)
    daemon = _daemon(clock, journal, ps)
    daemon.planner.set_emergency(VEHICLE, False, immediate=True)  # the engine is not heard
    daemon.recover(left)

    run_until(clock, daemon, [], wait(clock, CFG.recovery_grace_s + 3.0))
    # The old request was cancelled under its own id, within the grace.
    cancels = [t for t, c, i in ps["C-K1"].calls if c == "cancel"]
    assert len(cancels) == 1
    assert cancels[0] - restart == pytest.approx(CFG.recovery_grace_s, abs=1.0)
    row = journal.rows("requests", "request_id = ?", [rid])[0]
    assert row["closed"] is not None
    assert "not heard on its run" in row["close_reason"]
    assert journal.leftovers() == []
    assert any(e["what"] == "recovered" for e in journal.rows("events"))
    journal.close()
    again = Journal(path, clock)  # and the next start finds nothing to take back
    assert again.leftovers() == []
    boots = again.rows("boots")
    assert [b["clean"] for b in boots] == [None, 1, None]


def test_old_rows_are_pruned_by_the_retention(tmp_path: Path) -> None:
    clock = SimClock()
    journal = Journal(tmp_path / "j.sqlite", clock, retention_days=1)
    journal.command(_cmd(CommandKind.REQUEST, "a", clock.now()))
    journal.answer(Answer(clock.now(), "C-K1", "K1", "a", "request", "entering", None, 0.0))
    journal.command(_cmd(CommandKind.CANCEL, "a", clock.now()))
    journal.answer(Answer(clock.now(), "C-K1", "K1", "a", "cancel", "not_active", None, 0.0))
    clock.advance(2 * 86_400.0)
    journal.command(_cmd(CommandKind.REQUEST, "b", clock.now()))
    deleted = journal.prune()
    assert deleted >= 5
    assert [r["request_id"] for r in journal.rows("commands")] == ["b"]
    assert [r["request_id"] for r in journal.rows("requests")] == ["b"]


def test_a_full_disk_is_counted_and_never_raised(tmp_path: Path) -> None:
    """SQLite's own limit stands in for a full disk: the same SQLITE_FULL error."""
    clock = SimClock()
    journal = Journal(tmp_path / "j.sqlite", clock)
    journal._db.execute("PRAGMA max_page_count = 20")  # about 80 KiB
    for k in range(3000):
        journal.command(_cmd(CommandKind.REQUEST, f"r{k}", clock.now()))
    assert journal.counters["journal_write_failed"] > 0
    assert journal.counters["journal_rows_lost"] > 0
    journal.prune()
    journal.close()  # and closing does not raise either


def test_an_unusable_journal_is_a_journal_error_naming_the_file(tmp_path: Path) -> None:
    clock = SimClock()
    with pytest.raises(JournalError, match="does not exist"):
        Journal(tmp_path / "missing" / "j.sqlite", clock)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match=str(junk)):
        Journal(junk, clock)
    newer = tmp_path / "newer.sqlite"
    Journal(newer, clock).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="schema version 99"):
        Journal(newer, clock)

"""The NTCIP 1202 pre-emption objects behind net-snmp's snmpd (its pass_persist protocol).

snmpd starts this program and hands it every request under the asc node
(1.3.6.1.4.1.1206.4.2.1) on stdin: ``PING``, ``get``/``getnext`` with an OID, ``set``
with an OID and ``TYPE VALUE``; answers go to stdout (net-snmp's snmpd.conf(5),
"pass_persist"). The objects: maxPreempts, a writable unitBackupTime,
preemptControlState.n (0..1; anything else is wrong-value) and a read-only
preemptState.n that moves with the monotonic clock: entryStarted for ``--entry``
seconds after a call, then dwell; exitStarted for ``--exit`` seconds after the
release, then notActive. A call not rewritten within unitBackupTime is dropped, as
a cabinet's backup timer does.
"""

from __future__ import annotations

import argparse
import sys
import time

ASC = ".1.3.6.1.4.1.1206.4.2.1"
MAX_PREEMPTS = f"{ASC}.6.1.0"
BACKUP = f"{ASC}.3.3.0"
CONTROL = f"{ASC}.6.3.1.2."
STATE = f"{ASC}.6.2.1.16."
NOT_ACTIVE, ENTRY, DWELL, EXIT = 2, 4, 6, 8


class Peer:
    def __init__(self, preempts: int, backup_s: int, entry_s: float, exit_s: float) -> None:
        self.preempts = preempts
        self.backup_s = backup_s
        self.entry_s = entry_s
        self.exit_s = exit_s
        self.called: dict[int, float] = {}  # preempt -> monotonic of the first call
        self.written: dict[int, float] = {}  # preempt -> monotonic of the last rewrite
        self.released: dict[int, float] = {}  # preempt -> monotonic of the release

    def _expire(self, now: float) -> None:
        for n, at in list(self.written.items()):
            if self.backup_s > 0 and now - at > self.backup_s:
                self._release(n, at + self.backup_s)  # when the timer ran out, not now

    def _release(self, n: int, now: float) -> None:
        self.called.pop(n, None)
        self.written.pop(n, None)
        self.released[n] = now

    def value(self, oid: str) -> int | None:
        now = time.monotonic()
        self._expire(now)
        if oid == MAX_PREEMPTS:
            return self.preempts
        if oid == BACKUP:
            return self.backup_s
        n = self._preempt(oid)
        if n is None:
            return None
        if oid.startswith(CONTROL):
            return 1 if n in self.called else 0
        if n in self.called:
            return ENTRY if now - self.called[n] < self.entry_s else DWELL
        if n in self.released and now - self.released[n] < self.exit_s:
            return EXIT
        return NOT_ACTIVE

    def oids(self) -> list[str]:
        out = [BACKUP, MAX_PREEMPTS]
        out += [f"{STATE}{n}" for n in range(1, self.preempts + 1)]
        out += [f"{CONTROL}{n}" for n in range(1, self.preempts + 1)]
        return sorted(out, key=_key)

    def set(self, oid: str, value: int) -> str:
        now = time.monotonic()
        self._expire(now)
        if oid == BACKUP:
            if not 0 <= value <= 65535:
                return "wrong-value"
            self.backup_s = value
            return "DONE"
        n = self._preempt(oid)
        if n is None or oid.startswith(STATE):
            return "not-writable"
        if value not in (0, 1):
            return "wrong-value"
        if value == 1:
            self.called.setdefault(n, now)
            self.written[n] = now
        elif n in self.called:
            self._release(n, now)
        return "DONE"

    def _preempt(self, oid: str) -> int | None:
        for prefix in (CONTROL, STATE):
            if oid.startswith(prefix):
                tail = oid[len(prefix) :]
                if tail.isdigit() and 1 <= int(tail) <= self.preempts:
                    return int(tail)
        return None


def _key(oid: str) -> tuple[int, ...]:
    return tuple(int(x) for x in oid.strip(".").split("."))


def serve(peer: Peer) -> None:
    def answer(*lines: str) -> None:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    while True:
        command = sys.stdin.readline()
        if not command:
            return
        command = command.strip()
        if not command:
            continue  # snmpd ends a set with a blank line
        if command == "PING":
            answer("PONG")
            continue
        oid = sys.stdin.readline().strip()
        if command == "get":
            value = peer.value(oid)
            if value is None:
                answer("NONE")
            else:
                answer(oid, "integer", str(value))
        elif command == "getnext":
            later = [o for o in peer.oids() if _key(o) > _key(oid)]
            if later:
                answer(later[0], "integer", str(peer.value(later[0])))
            else:
                answer("NONE")
        elif command == "set":
            kind, _, text = sys.stdin.readline().strip().partition(" ")
            if kind != "integer" or not text.lstrip("-").isdigit():
                answer("wrong-type")
            else:
                answer(peer.set(oid, int(text)))
        else:
            answer("NONE")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preempts", type=int, default=4)
    p.add_argument("--backup", type=int, default=30)
    p.add_argument("--entry", type=float, default=1.0)
    p.add_argument("--exit", type=float, default=1.0)
    a = p.parse_args()
    serve(Peer(a.preempts, a.backup, a.entry, a.exit))


if __name__ == "__main__":
    main()

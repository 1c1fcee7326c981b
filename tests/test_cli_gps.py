"""`preemption gps parse`: real receiver logs and tracks in, one line per fix and a summary out."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import reduce
from operator import xor
from pathlib import Path

import pytest

from gps.files import read_track
from gps.nmea import parse_nmea_file
from preemption.cli import EXIT_CONFIG, EXIT_OK, main

from .helpers import DATA, ROOT

LOGS = DATA / "nmea"
TRACKS = DATA / "tracks"
FIELDS = ["vehicle", "time", "lat", "lon", "speed", "course", "hdop", "quality", "satellites",
          "source"]  # fmt: skip


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.mark.parametrize("log", ["bundg_zeus_9.log", "ublox-zed-f9p-nmea.log", "tcp-torture.log"])
def test_json_lines_and_the_summary_match_the_decoder(
    capsys: pytest.CaptureFixture[str], log: str
) -> None:
    code, lines, err = run_cli(capsys, "gps", "parse", str(LOGS / log), "--json",
                               "--vehicle", "HLF1")  # fmt: skip
    assert code == EXIT_OK, err
    docs = [json.loads(line) for line in lines]  # every line is JSON
    fixes, dropped = parse_nmea_file(LOGS / log, "HLF1")
    assert docs[-1] == {"fixes": len(fixes), "dropped": dict(dropped)}
    assert len(docs) == len(fixes) + 1
    for doc, fix in zip(docs, fixes, strict=False):
        assert list(doc) == FIELDS
        assert doc["vehicle"] == "HLF1"
        assert doc["source"] == log
        assert isinstance(doc["time"], float)  # UTC epoch seconds
        assert (doc["time"], doc["lat"], doc["lon"]) == (fix.time, fix.lat, fix.lon)
        assert (doc["speed"], doc["course"], doc["hdop"]) == (fix.speed, fix.course, fix.hdop)
        assert (doc["quality"], doc["satellites"]) == (int(fix.quality), fix.satellites)


def test_readable_output_has_a_line_per_fix_and_the_summary_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, lines, _ = run_cli(capsys, "gps", "parse", str(LOGS / "ublox-zed-f9p-nmea.log"))
    assert code == EXIT_OK
    fixes, dropped = parse_nmea_file(LOGS / "ublox-zed-f9p-nmea.log", "x")
    assert len(lines) == len(fixes) + 1
    assert lines[0].startswith("2019-04-12T00:39:56.000Z  -45.877567 170.500111")
    assert lines[-1] == f"{len(fixes)} fixes; dropped: comment 12, ignored {dropped['ignored']}"


def test_a_log_without_fixes_still_ends_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run_cli(capsys, "gps", "parse", str(LOGS / "garmin18x-bin.log"), "--json")
    assert code == EXIT_OK
    assert [json.loads(line) for line in lines] == [
        {"fixes": 0, "dropped": {"comment": 7, "garbage": 1}}
    ]


@pytest.mark.parametrize("track", ["sirfstarv.gpx", "ublox-zed-f9p.csv"])
def test_gpx_and_csv_are_read_by_their_suffix(
    capsys: pytest.CaptureFixture[str], track: str
) -> None:
    code, lines, _ = run_cli(capsys, "gps", "parse", str(TRACKS / track), "--json")
    assert code == EXIT_OK
    fixes, dropped = read_track(TRACKS / track, "x")
    assert json.loads(lines[-1]) == {"fixes": len(fixes), "dropped": dict(dropped)}
    assert [json.loads(line)["time"] for line in lines[:-1]] == [f.time for f in fixes]
    assert json.loads(lines[0])["vehicle"] == Path(track).stem  # the default vehicle id


def test_date_makes_a_gga_only_log_usable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def gga(t: str) -> str:
        body = f"GPGGA,{t},4929.1234,N,00828.5678,E,1,08,1.0,100.0,M,47.0,M,,"
        return f"${body}*{reduce(xor, body.encode(), 0):02X}\r\n"

    log = tmp_path / "gga-only.nmea"
    log.write_text(gga("120000.00") + gga("120001.00") + gga("120002.00"))
    _, lines, _ = run_cli(capsys, "gps", "parse", str(log), "--json")
    assert json.loads(lines[-1]) == {"fixes": 0, "dropped": {"no_date": 3}}
    _, lines, _ = run_cli(capsys, "gps", "parse", str(log), "--json", "--date", "2025-11-28")
    assert [json.loads(line)["time"] for line in lines[:-1]] == [
        1_764_331_200.0, 1_764_331_201.0, 1_764_331_202.0
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.log", None, "missing.log: cannot read the recording: No such file"),
        ("missing.gpx", None, "missing.gpx does not exist"),
        ("no-header.csv", "1,2,3\n", "lacks the column(s) time, lat, lon"),
        ("not-gpx.gpx", "<kml></kml>", "is XML but not GPX"),
    ],
)
def test_an_unusable_file_is_exit_2_with_a_clear_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | None,
    message: str,
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    code, lines, err = run_cli(capsys, "gps", "parse", str(path), "--json")
    assert code == EXIT_CONFIG
    assert lines == []
    assert err.startswith("error: ")
    assert message in err


def test_a_directory_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run_cli(capsys, "gps", "parse", str(tmp_path))
    assert (code, lines) == (EXIT_CONFIG, [])
    assert "Is a directory" in err


def test_the_command_pipes_json_on_stdout_only() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "preemption.cli", "gps", "parse", "--json",
         str(LOGS / "sirfstarv-nmea.log")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stderr == ""
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    assert docs[-1]["fixes"] == len(docs) - 1 > 0

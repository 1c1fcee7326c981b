"""`preemption check-config` refuses every deployment that would make wrong requests.

Each test writes a deployment that today's daemon would run with wrong requests
(or die on with a traceback) and checks that check-config exits 2 with a message
naming the file, the key path and what to do.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from preemption.cli import main
from preemption.kernel.clock import SimClock
from preemption.kernel.config import ConfigError, load_config
from preemption.kernel.model import Command, CommandKind, PreemptStatus
from routes.geojson import load_routes
from signal_adapters import registry
from signal_adapters.base import AdapterConfigError, AdapterContext, AdapterError
from signal_adapters.logfile import LogAdapter
from signal_adapters.simlink import SimLinkAdapter
from sim.nmea_out import epoch_sentences

from .helpers import DEMO_DIR

GOOD = (DEMO_DIR / "deployment.toml").read_text(encoding="utf-8")
ROUTES: dict[str, Any] = json.loads((DEMO_DIR / "routes.geojson").read_text(encoding="utf-8"))


def write(tmp_path: Path, text: str = GOOD, routes: dict[str, Any] | None = None) -> Path:
    (tmp_path / "routes.geojson").write_text(json.dumps(routes or ROUTES), encoding="utf-8")
    path = tmp_path / "deployment.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """check-config exits 2 and names the deployment file; the message is returned."""
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err, err
    assert "Traceback" not in err
    return err


def feature(doc: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    for f in doc["features"]:
        if f["properties"].get(key) == value:
            return f  # type: ignore[no-any-return]
    raise KeyError(value)


def swapped(doc: dict[str, Any]) -> dict[str, Any]:
    """Every position written lat, lon: the classic mistake."""
    out = copy.deepcopy(doc)
    for f in out["features"]:
        g = f["geometry"]
        if g["type"] == "Point":
            g["coordinates"] = g["coordinates"][::-1]
        else:
            g["coordinates"] = [c[::-1] for c in g["coordinates"]]
    return out


def moved(doc: dict[str, Any], dlon: float, dlat: float) -> dict[str, Any]:
    """The whole corridor shifted by (dlon, dlat) degrees."""
    out = copy.deepcopy(doc)
    for f in out["features"]:
        g = f["geometry"]
        pts = [g["coordinates"]] if g["type"] == "Point" else g["coordinates"]
        for c in pts:
            c[0] += dlon
            c[1] += dlat
    return out


def test_the_demo_deployment_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(DEMO_DIR / "deployment.toml")]) == 0
    assert "ok: 2 routes, 7 signalised intersections" in capsys.readouterr().out


# -- 1. numbers in route files ------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "1e-300", "0", "-30",
                                     "5000", "true", '"50"'])  # fmt: skip
def test_absurd_route_speed_limits_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], literal: str
) -> None:
    # NaN once asked three signals at once with ETA 0.
    text = json.dumps(ROUTES).replace('"speed_limit_kmh": 50', f'"speed_limit_kmh": {literal}', 1)
    path = write(tmp_path)
    (tmp_path / "routes.geojson").write_text(text, encoding="utf-8")
    err = refused(path, capsys)
    assert "routes.files" in err
    assert "routes.geojson" in err
    assert "route 'R1'" in err
    assert "speed_limit_kmh" in err
    assert "5 to 130 km/h" in err


@pytest.mark.parametrize("value", [float("nan"), 0.0, 0.5, 181.0, True, "10"])
def test_absurd_transition_times_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: object
) -> None:
    doc = copy.deepcopy(ROUTES)
    feature(doc, "intersection", "K2")["properties"]["transition_s"] = value
    err = refused(write(tmp_path, routes=doc), capsys)
    assert "'K2'" in err
    assert "transition_s" in err


# -- 2. lat and lon swapped -----------------------------------------------------------------


def test_swapped_lat_lon_with_an_epsg_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(write(tmp_path, routes=swapped(ROUTES)), capsys)
    assert "routes.files" in err
    assert "EPSG:25832" in err
    assert "are lat and lon swapped? GeoJSON is lon, lat" in err


def test_routes_outside_the_crs_area_are_refused_without_a_swap_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Mannheim corridor moved to New York, with Mannheim's EPSG:25832 still set.
    err = refused(write(tmp_path, routes=moved(ROUTES, -82.5, -8.8)), capsys)
    assert "outside the area of use of EPSG:25832" in err
    assert "swapped" not in err


def test_swapped_lat_lon_without_an_epsg_is_named_where_no_utm_zone_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A corridor at 86°E, 27°N (Kathmandu) written lat, lon: latitude 86° has no UTM zone.
    doc = swapped(moved(ROUTES, 86.0 - 8.5, 27.7 - 49.49))
    text = GOOD.replace("epsg = 25832  # ETRS89 / UTM zone 32N\n", "")
    err = refused(write(tmp_path, text, doc), capsys)
    assert "are lat and lon swapped? GeoJSON is lon, lat" in err


def test_a_crs_that_distorts_lengths_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Web Mercator is metric and projected, but at 49.5°N a metre on the ground is 1.54 m in it:
    # every distance and ETA would be half as long again.
    err = refused(write(tmp_path, GOOD.replace("epsg = 25832", "epsg = 3857")), capsys)
    assert "EPSG:3857" in err
    assert "lengths" in err


# -- 3. set-level checks of routecheck -------------------------------------------------------


def test_one_intersection_with_two_controllers_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = copy.deepcopy(ROUTES)
    k1 = feature(doc, "intersection", "K1")
    k1["properties"]["routes"] = ["R1"]
    other = copy.deepcopy(k1)
    other["properties"].update(routes=["R2"], controller="C-K2")
    doc["features"].insert(doc["features"].index(k1) + 1, other)
    err = refused(write(tmp_path, routes=doc), capsys)
    assert "routes.files" in err
    assert "one intersection has one controller" in err


def test_a_signal_on_a_shared_trunk_missing_from_one_route_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = copy.deepcopy(ROUTES)
    feature(doc, "intersection", "K2")["properties"]["routes"] = ["R1"]
    err = refused(write(tmp_path, routes=doc), capsys)
    assert "'R2'" in err
    assert "'K2'" in err
    assert "does not list it" in err


def test_a_signal_whose_transition_outlasts_the_maximum_hold_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Asked transition_s + lead_margin_s before the engine arrives, the request would hit
    # max_hold_s and be taken back before the engine is there.
    doc = copy.deepcopy(ROUTES)
    feature(doc, "intersection", "K4")["properties"]["transition_s"] = 118
    err = refused(write(tmp_path, routes=doc), capsys)
    assert "'K4'" in err
    assert "planner.max_hold_s" in err


# -- 4. files the deployment names --------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ('kind = "nmea-file"\nvehicle = "FW-OST-HLF1"\npath = "run.nmea"', "gps[0].path"),
        ('kind = "mqtt"\nhost = "b"\nusername = "u"\npassword_file = "pw"', "gps[0].password_file"),
        ('kind = "mqtt"\nhost = "b"\ntls_ca = "ca.pem"', "gps[0].tls_ca"),
        ('kind = "mqtt"\nhost = "b"\ntls_cert = "c.pem"\ntls_key = "k.pem"', "gps[0].tls_cert"),
        ('kind = "mqtt"\nhost = "b"\ntls_cert = "c.pem"\ntls_key = "k.pem"', "gps[0].tls_key"),
    ],
)
def test_missing_files_of_gps_sources_are_refused_with_their_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, key: str
) -> None:
    path = write(tmp_path, GOOD + f"\n[[gps]]\n{source}\n")
    err = refused(path, capsys)
    assert f"{key}: " in err
    assert "does not exist" in err
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert key in {loc for loc, _ in exc.value.problems}


def test_a_directory_named_as_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ca").mkdir()
    err = refused(write(tmp_path, GOOD + '\n[[gps]]\nkind = "mqtt"\nhost = "b"\ntls_ca = "ca"\n'),
                  capsys)  # fmt: skip
    assert "gps[0].tls_ca" in err
    assert "is a directory" in err


def test_existing_files_of_gps_sources_pass(tmp_path: Path) -> None:
    for name in ("run.nmea", "ca.pem", "pw"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    extra = (
        '\n[[gps]]\nkind = "nmea-file"\nvehicle = "FW-OST-HLF1"\npath = "run.nmea"\n'
        '\n[[gps]]\nkind = "mqtt"\nhost = "b"\ntls_ca = "ca.pem"\nusername = "preemption-daemon"'
        '\npassword_file = "pw"\n'
    )
    assert main(["check-config", str(write(tmp_path, GOOD + extra))]) == 0


# -- 5. adapter options -------------------------------------------------------------------


def _log_controllers(options: str) -> str:
    return GOOD.replace('adapter = "simlink"', f'adapter = "log"\noptions = {options}', 1)


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        # A typo wrote the shadow log to standard output, silently.
        (_log_controllers('{ pth = "shadow.jsonl" }'), "controllers[0].options.pth", "unknown key"),
        (_log_controllers("{ path = 5 }"), "controllers[0].options.path", "string"),
        (_log_controllers('{ path = "" }'), "controllers[0].options.path", "at least 1"),
        (
            GOOD.replace('adapter = "simlink"', 'adapter = "simlink"\noptions = { host = "x" }', 1),
            "controllers[0].options.host",
            "unknown key",
        ),
    ],
)
def test_adapter_options_are_validated_against_the_adapters_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, what: str
) -> None:
    path = write(tmp_path, text)
    err = refused(path, capsys)
    assert f"{key}: " in err
    assert what in err
    with pytest.raises(ConfigError) as exc:
        load_config(path, adapters=registry.option_checks())
    assert any(loc == key and what in msg for loc, msg in exc.value.problems)
    # Given only the names, load_config cannot know the options (and does not pretend to).
    load_config(path, adapters=set(registry.installed()))


def test_every_builtin_adapter_declares_options_that_forbid_unknown_keys() -> None:
    for name in registry.installed():
        model = registry.options_model(name)
        assert model is not None, name
        assert model.model_config.get("extra") == "forbid", name
    assert registry.validate_options("log", {"path": "x.jsonl"}) == []
    assert registry.validate_options("log", {"pth": "x"}) == [
        ("pth", "unknown key (misspelt, or not valid here)")
    ]


def test_adapters_refuse_unknown_options_themselves(tmp_path: Path) -> None:
    ctx = AdapterContext(clock=SimClock(), resources={"simlink": {}})
    with pytest.raises(AdapterConfigError, match=r"'C-1'.*options\.pth: unknown key"):
        LogAdapter("C-1", {"pth": str(tmp_path / "x")}, ctx)
    with pytest.raises(AdapterConfigError, match=r"options\.host: unknown key"):
        SimLinkAdapter("C-1", {"host": "x"}, ctx)


def test_an_adapter_without_an_options_model_is_not_checked() -> None:
    class Vendor:
        pass

    assert registry.model_of(Vendor) is None

    class Broken:
        Options = dict

    with pytest.raises(AdapterConfigError, match="not a pydantic model"):
        registry.model_of(Broken)


# -- 6. timings (more in test_config.py) ----------------------------------------------------


def test_an_hour_of_preemption_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(write(tmp_path, GOOD.replace("max_hold_s = 120.0", "max_hold_s = 3600")), capsys)
    assert "planner.max_hold_s: " in err
    assert "300" in err
    assert "cross traffic" in err


# -- 7. EPSG codes (more in test_config.py) ------------------------------------------------


@pytest.mark.parametrize("value", ["4326", "true", '"x"', "99999"])
def test_unusable_epsg_codes_are_refused_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    err = refused(write(tmp_path, GOOD.replace("epsg = 25832", f"epsg = {value}")), capsys)
    assert "deployment.epsg: " in err
    assert "25832" in err


# -- 8. binary, deep and huge files --------------------------------------------------------


def test_a_deployment_that_is_not_utf8_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    path.write_bytes(GOOD.encode("utf-16"))
    assert "not UTF-8" in refused(path, capsys)


def test_a_deeply_nested_deployment_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD + "\n[x]\ny = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "nested too deeply" in refused(path, capsys)


def test_a_huge_deployment_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    with path.open("ab") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: costs nothing, would cost a lot to parse
    assert "MiB" in refused(path, capsys)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (bytes(range(256)) * 64, "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"\x00" * 1000, "not readable as GeoJSON"),
    ],
)
def test_broken_route_files_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, what: str
) -> None:
    path = write(tmp_path)
    (tmp_path / "routes.geojson").write_bytes(content)
    err = refused(path, capsys)
    assert "routes.files" in err
    assert "routes.geojson" in err
    assert what in err


def test_a_huge_route_file_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    with (tmp_path / "routes.geojson").open("ab") as f:
        f.truncate(51 * 1024 * 1024)
    err = refused(path, capsys)
    assert "50 MiB" in err


def test_the_real_command_prints_no_traceback_for_binary_input(tmp_path: Path) -> None:
    path = write(tmp_path)
    (tmp_path / "routes.geojson").write_bytes(os.urandom(4096))
    exe = Path(sys.executable).parent / "preemption"
    out = subprocess.run(
        [str(exe), "check-config", str(path)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "routes.geojson" in out.stderr


# -- 9. the shadow log on a full disk --------------------------------------------------------


def _command(kind: CommandKind = CommandKind.REQUEST) -> Command:
    return Command(
        kind=kind,
        request_id="r-1",
        vehicle="FW-1",
        intersection="K1",
        controller="C-K1",
        approach="1",
        time=0.0,
        eta_s=20.0,
        duration_s=60.0,
        priority="fire",
    )


def test_a_full_disk_is_an_adapter_error_not_a_crash() -> None:
    adapter = LogAdapter("C-K1", {"path": "/dev/full"}, AdapterContext(clock=SimClock()))
    calls = {
        CommandKind.REQUEST: adapter.request,
        CommandKind.UPDATE: adapter.update,
        CommandKind.CANCEL: adapter.cancel,
    }

    async def run() -> None:
        for kind, call in calls.items():
            with pytest.raises(AdapterError, match="No space left on device") as err:
                await call(_command(kind))
            assert "cannot write the shadow log /dev/full" in str(err.value)
            assert "free disk space" in str(err.value)
        # Nothing was written down, so nothing is held.
        assert (await adapter.state("K1")).status is PreemptStatus.NOT_ACTIVE
        await adapter.close()

    asyncio.run(run())


def _shadow_deployment(tmp_path: Path, log_path: str) -> Path:
    """The demo corridor in shadow mode (log adapter), replaying the engine along R1."""
    routes = load_routes(DEMO_DIR / "routes.geojson", epsg=25832)
    lines = []
    for k in range(int(2450 / 12.5)):
        p = routes["R1"].at(12.5 * k)
        lon, lat = routes.projector.to_wgs84(p.x, p.y)
        # Stamped from now on: the planner asks for nothing on a position minutes old.
        lines += epoch_sentences(round(time.time()) + k, lat, lon, 12.5, p.heading_deg)
    (tmp_path / "r1.nmea").write_text("\r\n".join(lines) + "\r\n", encoding="ascii")
    log = f'adapter = "log"\noptions = {{ path = "{log_path}" }}'
    text = GOOD.replace('adapter = "simlink"', log)
    gps = '\n[[gps]]\nkind = "nmea-file"\nvehicle = "FW-OST-HLF1"\npath = "r1.nmea"\nrate = 40.0\n'
    return write(tmp_path, text + gps)


def test_the_daemon_counts_a_full_disk_and_goes_on(tmp_path: Path) -> None:
    cfg = _shadow_deployment(tmp_path, "/dev/full")
    assert main(["check-config", str(cfg)]) == 0
    exe = Path(sys.executable).parent / "preemption"
    out = subprocess.run(
        [str(exe), "run", "--config", str(cfg), "--emergency", "FW-OST-HLF1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["stopped"] is True
    # K1..K5, each asked, each refused by the disk, each logged, and the run went on to the end.
    failed = {
        line.split(" at ")[1].split()[0]
        for line in out.stderr.splitlines()
        if "failed: controller" in line
        and "cannot write the shadow log /dev/full: No space left on device; free disk space"
        in line
    }
    assert failed == {"K1", "K2", "K3", "K4", "K5"}, out.stderr


def test_a_file_the_daemon_may_not_read_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The access check says no (run as root in CI, so chmod 0 would not stop a read).
    (tmp_path / "pw").write_text("secret\n", encoding="utf-8")
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p).name == "pw" else real(p, mode)
    )
    source = 'kind = "mqtt"\nhost = "b"\nusername = "u"\npassword_file = "pw"'
    err = refused(write(tmp_path, GOOD + f"\n[[gps]]\n{source}\n"), capsys)
    assert "gps[0].password_file" in err
    assert "not readable by this user" in err


def test_a_fleet_feed_anyone_could_forge_is_refused_unless_marked_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found: tls = false without credentials was accepted without a word, and an anonymous
    client publishing as an allowed vehicle caused a request."""
    plain = '\n[[gps]]\nkind = "mqtt"\nhost = "127.0.0.1"\ntls = false\n'
    err = refused(write(tmp_path, GOOD + plain), capsys)
    assert "not authenticated" in err
    assert "insecure = true" in err
    assert main(["check-config", str(write(tmp_path, GOOD + plain + "insecure = true\n"))]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out
    assert "publish as a fire engine" in out

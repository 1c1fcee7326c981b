from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preemption.cli import main
from preemption.kernel.config import (
    ConfigError,
    PlannerConfig,
    ServiceConfig,
    Within,
    load_config,
)
from signal_adapters import registry

from .helpers import DEMO_DIR

GOOD = (DEMO_DIR / "deployment.toml").read_text(encoding="utf-8")


def _write(tmp_path: Path, text: str) -> Path:
    shutil.copy(DEMO_DIR / "routes.geojson", tmp_path / "routes.geojson")
    path = tmp_path / "deployment.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_deployment_is_valid_and_paths_become_absolute() -> None:
    dep = load_config(DEMO_DIR / "deployment.toml", adapters=set(registry.installed()))
    assert dep.routes.files == [DEMO_DIR / "routes.geojson"]
    assert {c.adapter for c in dep.controllers} == {"simlink"}
    assert dep.planner.lead_margin_s == 4.0


@pytest.mark.parametrize(
    ("edit", "key", "what"),
    [
        (
            lambda t: t.replace('name = "Demo corridor', 'nom = "Demo corridor'),
            "deployment.name",
            "required key is missing",
        ),
        (
            lambda t: t.replace("max_hold_s = 120.0", 'max_hold_s = "long"'),
            "planner.max_hold_s",
            "number",
        ),
        (
            lambda t: t.replace('adapter = "simlink"', 'adapter = "ocit-o"', 1),
            "controllers[0].adapter",
            "unknown adapter 'ocit-o'",
        ),
        (
            lambda t: t.replace("dead_man_s = 15.0", "dead_man_s = 15.0\ndead_men_s = 3"),
            "planner.dead_men_s",
            "unknown key",
        ),
        (
            lambda t: t.replace('priority = "fire"', 'priority = "ice-cream"'),
            "vehicles[0].priority",
            "not a priority class",
        ),
        (lambda t: t.replace('id = "C-K2"', 'id = "C-K1"'), "controllers[1].id", "defined twice"),
    ],
)
def test_broken_config_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, key: str, what: str
) -> None:
    path = _write(tmp_path, edit(GOOD))  # type: ignore[operator]
    with pytest.raises(ConfigError) as err:
        load_config(path, adapters=set(registry.installed()))
    assert any(loc == key and what in msg for loc, msg in err.value.problems), err.value.problems
    assert main(["check-config", str(path)]) == 2
    stderr = capsys.readouterr().err
    assert str(path) in stderr
    assert key in stderr


def test_toml_syntax_error_and_missing_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, GOOD.replace("[planner]", "[planner"))
    assert main(["check-config", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_check_config_follows_references_into_route_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A controller the route file names but the deployment lacks.
    path = _write(tmp_path, GOOD.replace('[[controllers]]\nid = "C-K7"\nadapter = "simlink"\n', ""))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'C-K7'" in err
    assert "routes.files" in err


def test_check_config_cli_ok_end_to_end() -> None:
    exe = Path(sys.executable).parent / "preemption"
    out = subprocess.run(
        [str(exe), "check-config", str(DEMO_DIR / "deployment.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "2 routes, 7 signalised intersections" in out.stdout
    assert "EPSG:25832" in out.stdout


def test_gps_sources_of_every_kind_validate_and_name_their_keys(tmp_path: Path) -> None:
    ok = GOOD + (
        '\n[[gps]]\nkind = "serial"\nvehicle = "FW-OST-HLF1"\ndevice = "/dev/ttyUSB0"\n'
        '\n[[gps]]\nkind = "gpsd"\nvehicle = "FW-OST-HLF1"\n'
        '\n[[gps]]\nkind = "mqtt"\nhost = "broker.example"\ntls_ca = "ca.pem"\n'
    )
    (tmp_path / "ca.pem").write_text("x", encoding="utf-8")  # a named file must exist
    dep = load_config(_write(tmp_path, ok), adapters=set(registry.installed()))
    assert [g.kind for g in dep.gps] == ["serial", "gpsd", "mqtt"]
    assert dep.gps[2].tls_ca == tmp_path / "ca.pem"  # type: ignore[union-attr]
    bad = GOOD + '\n[[gps]]\nkind = "serial"\nvehicle = "FW-OST-HLF1"\nbaud = 4800\n'
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, bad), adapters=set(registry.installed()))
    keys = {loc for loc, _ in err.value.problems}
    assert {"gps[0].device", "gps[0].baud"} <= keys


# -- bounds and relations of the timings ------------------------------------------------------

FLOAT_KEYS = [
    (section, name)
    for section, model in (("planner", PlannerConfig), ("service", ServiceConfig))
    for name, field in model.model_fields.items()
    if field.annotation in (float, float | None)
]
INT_KEYS = [
    (section, name)
    for section, model in (("planner", PlannerConfig), ("service", ServiceConfig))
    for name, field in model.model_fields.items()
    if field.annotation is int
]


def _with(section: str, lines: str) -> str:
    """GOOD with ``lines`` in [section] (added when GOOD has none), replacing those keys."""
    names = {ln.split(" = ")[0] for ln in lines.splitlines()}
    text = "\n".join(ln for ln in GOOD.splitlines() if ln.split(" = ")[0] not in names) + "\n"
    if f"[{section}]\n" in text:
        return text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n", 1)
    return text.replace("[[vehicles]]", f"[{section}]\n{lines}\n\n[[vehicles]]", 1)


def _problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text), adapters=set(registry.installed()))
    return err.value.problems


def _bound(section: str, name: str) -> Within:
    model = PlannerConfig if section == "planner" else ServiceConfig
    bounds = [m for m in model.model_fields[name].metadata if isinstance(m, Within)]
    assert len(bounds) == 1, f"{section}.{name} has no Within(...) bound"
    return bounds[0]


def test_every_timing_of_planner_and_service_is_bounded_with_a_reason() -> None:
    assert len(FLOAT_KEYS) >= 25
    for section, name in FLOAT_KEYS + INT_KEYS:
        assert len(_bound(section, name).why) > 30, f"{section}.{name}: the bound says not why"


@settings(max_examples=150)
@given(
    st.sampled_from(FLOAT_KEYS),
    st.sampled_from(["nan", "+nan", "-nan", "inf", "+inf", "-inf", "true", '"12"']),
)
def test_nan_inf_and_non_numbers_are_refused_for_every_float_key(
    key: tuple[str, str], literal: str
) -> None:
    section, name = key
    with tempfile.TemporaryDirectory() as tmp:
        problems = _problems(Path(tmp), _with(section, f"{name} = {literal}"))
    assert any(loc == f"{section}.{name}" for loc, _ in problems), problems


@settings(max_examples=100)
@given(st.sampled_from(FLOAT_KEYS + INT_KEYS), st.booleans(), st.data())
def test_values_beyond_a_bound_are_refused_with_the_range_and_the_reason(
    key: tuple[str, str], above: bool, data: st.DataObject
) -> None:
    section, name = key
    bound = _bound(section, name)
    if above:
        value = data.draw(st.floats(bound.hi, 1e12, exclude_min=True), label="value")
    else:
        value = data.draw(st.floats(-1e12, bound.lo, exclude_max=not bound.lo_open), label="value")
    literal = repr(value)
    if bound.integer:
        literal = str(math.ceil(value) if above else math.floor(value))
    with tempfile.TemporaryDirectory() as tmp:
        problems = _problems(Path(tmp), _with(section, f"{name} = {literal}"))
    msgs = [msg for loc, msg in problems if loc == f"{section}.{name}"]
    assert msgs, problems
    assert f"{bound.lo:g}" in msgs[0]
    assert f"{bound.hi:g}" in msgs[0]
    assert bound.why in msgs[0]


def test_the_defaults_and_the_demo_lie_within_every_bound() -> None:
    # Defaults are not validated by pydantic: their dump is, bounds and relations alike.
    PlannerConfig.model_validate(PlannerConfig().model_dump())
    ServiceConfig.model_validate(ServiceConfig().model_dump())
    load_config(DEMO_DIR / "deployment.toml", adapters=registry.option_checks())


@pytest.mark.parametrize(
    ("section", "lines", "key", "what"),
    [
        ("planner", "max_hold_s = 3600", "planner.max_hold_s", "cross traffic"),
        ("planner", "refresh_s = 0.2", "planner.refresh_s", "once a second"),
        # The controller holds the call for eta + 2 x refresh_s: beyond half the maximum
        # hold a dead daemon's call runs to the maximum hold.
        ("planner", "refresh_s = 45.0\nmax_hold_s = 80.0", "planner.refresh_s", "half"),
        ("planner", "dead_man_s = 60.0\nmax_hold_s = 50.0", "planner.dead_man_s", "max_hold_s"),
        (
            "planner",
            "default_transition_s = 100.0\nlead_margin_s = 30.0",
            "planner.max_hold_s",
            "before the engine arrives",
        ),
        ("service", "call_timeout_s = 10.0\nshutdown_timeout_s = 5.0", "service.shutdown_timeout_s",
         "call_timeout_s"),
        (
            "service",
            "call_timeout_s = 25.0\nshutdown_timeout_s = 30.0",
            "planner.refresh_s",
            "call_timeout_s",
        ),
    ],
)  # fmt: skip
def test_timings_that_contradict_each_other_are_refused(
    tmp_path: Path, section: str, lines: str, key: str, what: str
) -> None:
    problems = _problems(tmp_path, _with(section, lines))
    assert any(loc == key and what in msg for loc, msg in problems), problems


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("planner", "look_ahead = true", "planner.look_ahead"),
        ("service", "fix_queue = true", "service.fix_queue"),
        ("service", "breaker_failures = 2.5", "service.breaker_failures"),
        ("priorities", "fire = true", "priorities.fire"),
    ],
)
def test_true_is_not_one(tmp_path: Path, section: str, line: str, key: str) -> None:
    problems = _problems(tmp_path, _with(section, line))
    assert any(loc == key for loc, _ in problems), problems


# -- EPSG ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("4326", "degrees"),
        ("4978", "not a projected"),
        ("2263", "US survey foot"),
        ("99999", "does not exist"),
        ("-1", "does not exist"),
        ("true", "integer"),
        ('"x"', "integer"),
        ('"25832"', "integer"),
        ("25832.0", "integer"),
    ],
)
def test_epsg_must_be_a_metric_crs(tmp_path: Path, value: str, what: str) -> None:
    problems = _problems(tmp_path, GOOD.replace("epsg = 25832", f"epsg = {value}"))
    msgs = [msg for loc, msg in problems if loc == "deployment.epsg"]
    assert msgs, problems
    assert what in msgs[0]
    assert "25832 for ETRS89 / UTM 32N" in msgs[0]


# -- files ---------------------------------------------------------------------------------


def test_files_of_gps_sources_must_exist(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x", encoding="utf-8")
    extra = (
        '\n[[gps]]\nkind = "nmea-file"\nvehicle = "FW-OST-HLF1"\npath = "no.nmea"\n'
        '\n[[gps]]\nkind = "mqtt"\nhost = "b"\ntls_ca = "ca.pem"\ntls_cert = "c.pem"\n'
    )
    problems = dict(_problems(tmp_path, GOOD + extra))
    assert set(problems) == {"gps[0].path", "gps[1].tls_cert"}
    assert str(tmp_path / "no.nmea") in problems["gps[0].path"]
    assert "[[gps]]" in problems["gps[0].path"]


# -- unreadable deployment files -------------------------------------------------------------


def test_a_deployment_in_another_encoding_or_too_deep_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_bytes(b"\xff\xfe" + GOOD.encode("utf-16-le"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
    path.write_text("x = " + "{ a = " * 50_000 + "1" + " }" * 50_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ('kind = "nmea-file"\nvehicle = "FW-OST-HLF1"\npath = "r.nmea"', "rate"),
        ('kind = "mqtt"\nhost = "b"', "max_rate_hz"),
        ('kind = "mqtt"\nhost = "b"', "max_age_s"),
        ('kind = "mqtt"\nhost = "b"', "max_future_s"),
        ('kind = "mqtt"\nhost = "b"', "port"),
        ('kind = "serial"\nvehicle = "FW-OST-HLF1"\ndevice = "/dev/ttyS0"', "baudrate"),
    ],
)
@pytest.mark.parametrize("literal", ["nan", "inf", "-inf", "true", "-1"])
def test_numbers_of_gps_sources_are_finite_and_bounded(
    tmp_path: Path, source: str, key: str, literal: str
) -> None:
    (tmp_path / "r.nmea").write_text("", encoding="utf-8")
    problems = _problems(tmp_path, GOOD + f"\n[[gps]]\n{source}\n{key} = {literal}\n")
    assert any(loc == f"gps[0].{key}" for loc, _ in problems), problems

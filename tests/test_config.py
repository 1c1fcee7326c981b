from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from preemption.cli import main
from preemption.kernel.config import ConfigError, load_config
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
    dep = load_config(_write(tmp_path, ok), adapters=set(registry.installed()))
    assert [g.kind for g in dep.gps] == ["serial", "gpsd", "mqtt"]
    assert dep.gps[2].tls_ca == tmp_path / "ca.pem"  # type: ignore[union-attr]
    bad = GOOD + '\n[[gps]]\nkind = "serial"\nvehicle = "FW-OST-HLF1"\nbaud = 4800\n'
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, bad), adapters=set(registry.installed()))
    keys = {loc for loc, _ in err.value.problems}
    assert {"gps[0].device", "gps[0].baud"} <= keys

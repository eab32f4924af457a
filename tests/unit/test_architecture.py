"""The dependency rules of DESIGN.md hold: protocols imports nothing of ours; models and simulator
only protocols; agent only protocols and models; cloud only protocols. The contracts live in
pyproject.toml ([tool.importlinter]); this runs them so `pytest` alone enforces them too."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports (import-linter, in the dev extra) is not installed")
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout, result.stdout


def test_gateway_install_pulls_no_training_database_or_web_packages() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gateway = project["dependencies"] + project["optional-dependencies"]["edge"]
    names = {dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for dep in gateway}
    forbidden = {
        "scikit-learn",
        "skl2onnx",
        "psycopg",
        "psycopg2",
        "paho-mqtt",
        "starlette",
        "uvicorn",
        "aiohttp",
        "fastapi",
        "flask",
        "django",
        "lightgbm",
        "pandas",
    }
    assert names.isdisjoint(forbidden), names & forbidden

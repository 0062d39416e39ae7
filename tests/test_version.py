"""``torchdecoupled --version``: the installed version, else a source checkout's pyproject.toml."""
import importlib.metadata
import subprocess
import sys
import tomllib

import pytest

from torchdecoupled import version
from torchdecoupled.cli import main


def pyproject_version() -> str:
    with open(version.PYPROJECT, "rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_version_prints_the_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"torchdecoupled {importlib.metadata.version('torchdecoupled')}\n"
    p = subprocess.run([sys.executable, "-m", "torchdecoupled", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert (p.returncode, p.stdout) == (0, f"torchdecoupled {pyproject_version()}\n")


def test_a_checkout_that_is_not_installed_reads_pyproject(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert version.version() == pyproject_version()
    monkeypatch.setattr(version, "PYPROJECT", str(tmp_path / "pyproject.toml"))
    assert version.version() == "unknown"

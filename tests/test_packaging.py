"""The wheel ships what pyproject.toml declares: py.typed, LICENSE, the shipped criterion, the CLI."""

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Build the wheel from a copy of the tree (no build artifacts in the checkout), offline with
    this environment's setuptools when it is recent enough, else in pip's isolated build."""
    try:
        import setuptools
    except ImportError:
        setuptools = None
    isolated = setuptools is None or int(setuptools.__version__.split(".")[0]) < 77  # pyproject's requirement
    src = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    flags = [] if isolated else ["--no-build-isolation", "--no-index"]
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *flags, "-q", "-w", str(out)],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0 and isolated:
        pytest.skip(f"no setuptools >= 77 here and none could be fetched for an isolated build: {p.stderr[-300:]}")
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = out.glob("muonscope-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_ships_py_typed_and_license(wheel):
    names = set(wheel.namelist())
    assert "muonscope/py.typed" in names
    licenses = [n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n]
    assert licenses, sorted(n for n in names if ".dist-info/" in n)
    text = wheel.read(licenses[0]).decode()
    assert text.startswith("MIT License") and "Copyright (c) 2026 The muonscope authors" in text
    assert "muonscope/laws/calibrated_criterion.json" in names


def test_wheel_metadata_and_console_script(wheel):
    import muonscope

    meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(wheel.read(meta_name))
    assert meta["Name"] == "muonscope" and meta["Version"] == muonscope.__version__
    assert meta["License-Expression"] == "MIT"
    assert "LICENSE" in meta.get_all("License-File")
    entry = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "muonscope = muonscope.cli:main" in entry
    extras = set(meta.get_all("Provides-Extra"))
    assert {"test", "docs", "hf"} <= extras


def test_source_tree_has_the_release_files():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and "Keep a Changelog" in changelog
    assert (ROOT / "src" / "muonscope" / "py.typed").exists()
    assert "site/" in (ROOT / ".gitignore").read_text().split()

import subprocess
import sys

from PIL import Image

CLI = [sys.executable, "-m", "muonscope.cli"]


def run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_ns_table_and_plot(tmp_path):
    out = tmp_path / "maps.png"
    r = run("ns", "-s", "jordan", "-s", "polar-express", "-k", "3", "-k", "5", "--plot", str(out))
    assert r.returncode == 0, r.stderr
    assert "0.000207" in r.stdout and "0.00245" in r.stdout and "polar-express" in r.stdout
    with Image.open(out) as im:
        assert im.size[0] > 400


def test_ns_bad_arguments_one_line_exit_2():
    for args in (["ns", "--shape", "3y4"], ["ns", "-s", "nope"], ["ns", "-k", "x"], ["ns", "--rho", "-1"], ["frobnicate"]):
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("muonscope: error:"), (args, r.stderr)


def test_ns_table_is_a_pure_function():
    from rich.console import Console

    from muonscope.cli.ns import ns_table
    from muonscope.orth.schedules import get_schedule

    console = Console(width=200, record=True)
    console.print(ns_table([(get_schedule("jordan"), 5), (get_schedule("classical"), 5)], [0.1], (1024, 4096), 1e-3))
    text = console.export_text()
    assert "0.000207" in text and "0.00313" in text and "96.64" in text

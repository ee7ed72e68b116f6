"""The HTML report in a real browser (headless Chromium at 1280×900): every image loads, no layout
element sticks out of the page, and the verdict table is on the first screen.

Chromium is installed by the test setup when it is missing and the package manager allows it
(root with apt-get: ``apt-get install -y chromium``); elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from muonscope.laws.synthetic import synthetic_records
from muonscope.report.build import build_report
from muonscope.spectra.store import RunStore

WIDTH, HEIGHT = 1280, 900
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs after load: opens every <details> (folded tables must fit too), then measures.
CHECK_JS = """
<script>
window.addEventListener('load', () => {
  document.querySelectorAll('details').forEach(d => d.open = true);
  const W = document.documentElement.clientWidth;
  const imgs = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                w: i.naturalWidth, shown: i.getBoundingClientRect().width}));
  const over = [];
  for (const e of document.body.querySelectorAll('*')) {
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    const clip = e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === 'visible'
                 && e.clientWidth > 0 && !['TD', 'TH', 'SPAN', 'B', 'SUMMARY'].includes(e.tagName);
    if (r.right > W + 0.5 || r.left < -0.5 || clip)
      over.push(`${e.tagName} right=${Math.round(r.right)} sw=${e.scrollWidth} cw=${e.clientWidth}: `
                + (e.textContent || '').trim().slice(0, 60));
  }
  document.querySelectorAll('details').forEach(d => d.open = false);
  const h2 = [...document.querySelectorAll('h2')].map(h => h.textContent);
  const table = document.querySelector('h2 ~ table');
  const out = document.createElement('pre');
  out.id = 'layout-check';
  out.textContent = JSON.stringify({W, docW: document.documentElement.scrollWidth, imgs, over, h2,
                                    firstTableBottom: table ? table.getBoundingClientRect().bottom : null,
                                    innerHeight: window.innerHeight});
  document.body.appendChild(out);
});
</script>
"""


def find_chromium(install: bool = True) -> tuple[str | None, str]:
    """(path to a Chromium binary or None, why none)."""
    for name in NAMES:
        if path := shutil.which(name):
            return path, ""
    if not install:
        return None, "no chromium binary on PATH"
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed and cannot be installed here (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        r = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True,
                           timeout=300, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"apt-get install chromium failed: {exc}"
    if r.returncode != 0:
        return None, f"apt-get install chromium failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return shutil.which("chromium"), ""


def _flags(chromium: str) -> list[str]:
    return [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}", "--run-all-compositor-stages-before-draw",
            "--virtual-time-budget=15000", "--user-data-dir=" + str(Path(os.environ.get("TMPDIR", "/tmp"))
                                                                     / f"muonscope-chromium-{os.getpid()}")]


def check_in_browser(chromium: str, report: Path, screenshot: Path | None = None) -> dict:
    """Render ``report`` headless with the measuring script; returns its JSON (and a screenshot of
    the first screen if asked)."""
    page = report.with_name(report.stem + ".check.html")
    page.write_text(report.read_text().replace("</body>", CHECK_JS + "</body>"))
    r = subprocess.run([*_flags(chromium), "--dump-dom", page.resolve().as_uri()], capture_output=True,
                       text=True, timeout=300)
    m = re.search(r"<pre id=\"layout-check\">(.*?)</pre>", r.stdout, re.S)
    assert m, f"the measuring script did not run (rc {r.returncode}): {r.stderr[-2000:]}"
    if screenshot is not None:
        subprocess.run([*_flags(chromium), f"--screenshot={screenshot}", report.resolve().as_uri()],
                       capture_output=True, text=True, timeout=300)
    return json.loads(html.unescape(m.group(1)))


@pytest.fixture(scope="module")
def chromium():
    path, why = find_chromium()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    df = synthetic_records([1e5, 4e5, 1.6e6], layer_types=("q", "v", "o", "mlp_up", "mlp_down"), n_blocks=4,
                           steps=range(10, 301, 10), seeds=2, alpha=lambda t, d: 0.5 if d == 1 else 0.3)
    r = np.minimum(df["rows"], df["cols"])
    writes = df["layer_type"].isin(["o", "mlp_down"])
    df["null_dirs"] = np.where(writes, 1, 0)
    df["s_min"] = np.where(writes, 5e-9, 2e-5)
    df["frac_failed"] = np.where(writes, 1 / r, 1.5 / r)
    df["ns_schedule"], df["ns_steps"] = "jordan", 5
    for rid, g in df.groupby("run_id"):
        st = RunStore.create(root / rid, {"model_params": int(g.model_params.iloc[0]), "seed": int(g.seed.iloc[0]),
                                          "config": {"optimizer": "muon"}, "status": "complete",
                                          "tokens_per_s": 30904.2 / (1 + int(g.model_params.iloc[0]) / 1e5)})
        st.append_spectra(g.to_dict("records"))
        for s in range(10, 301, 10):
            st.log_metrics(s, train_loss=4 - s / 150, **({"val_loss": 4.1 - s / 150} if s % 100 == 0 else {}))
        st.close()
    return build_report([root], root / "report.html", targets=(1.2e8, 7e9, 7e10, 1e12))


def test_report_renders_in_chromium(chromium, report, tmp_path):
    shot = tmp_path / "first-screen.png"
    res = check_in_browser(chromium, report, screenshot=shot)
    assert res["h2"][0].startswith("Verdict"), res["h2"]
    assert len(res["imgs"]) >= 6
    bad = [i["alt"] for i in res["imgs"] if not i["ok"]]
    assert not bad, f"images that did not load: {bad}"
    assert all(0 < i["shown"] <= res["W"] for i in res["imgs"])
    assert res["docW"] <= res["W"], f"the page scrolls sideways: {res['docW']} > {res['W']}"
    assert not res["over"], "elements overflow:\n" + "\n".join(res["over"][:20])
    assert res["firstTableBottom"] is not None and res["firstTableBottom"] <= res["innerHeight"], \
        f"the verdict table ends at {res['firstTableBottom']} px, below the first screen ({res['innerHeight']} px)"
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (WIDTH, HEIGHT)
        assert len(np.unique(np.asarray(im.convert("L").resize((64, 48))))) > 8  # not a blank page

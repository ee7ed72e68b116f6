"""The report renders from run stores: HTML parses, every embedded image decodes; Markdown too."""

import base64
import io
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from PIL import Image

from muonscope.errors import ConfigError
from muonscope.laws.synthetic import synthetic_records
from muonscope.report.build import build_report
from muonscope.spectra.store import RunStore


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    df = synthetic_records([1e5, 4e5, 1.6e6], layer_types=("q", "mlp_down"), n_blocks=4,
                           steps=range(10, 301, 10), alpha=lambda t, d: 0.25 if d < 1 else 0.5)
    df["frac_failed"] = 0.0
    for rid, g in df.groupby("run_id"):
        st = RunStore.create(root / rid, {"model_params": int(g.model_params.iloc[0]),
                                          "config": {"optimizer": "muon"}, "status": "complete"})
        st.append_spectra(g.to_dict("records"))
        for s in range(10, 301, 10):
            st.log_metrics(s, train_loss=4 - s / 150, **({"val_loss": 4.1 - s / 150} if s % 100 == 0 else {}))
        st.close()
    return root


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])


def test_html_report_is_self_contained_and_images_decode(sweep_dir, tmp_path):
    out = build_report([sweep_dir], tmp_path / "r.html", targets=(1e9, 7e10))
    text = out.read_text()
    p = _Collect()
    p.feed(text)
    assert {"h2", "table", "img"} <= set(p.tags)
    assert len(p.imgs) >= 6
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
    for heading in ("Scaling laws", "NS recipe", "Spectra during training", "Loss"):
        assert heading in text
    assert text.index("<h2>Verdict") < text.index("<h2>Runs")  # the answer comes first
    assert "Plan for M = 1e9" in text and "Plan for M = 7e10" in text  # the recipe for each target is there
    assert "<NA>" not in text and "&lt;NA&gt;" not in text


def test_markdown_report_and_cli(sweep_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "muonscope.cli", "report", str(sweep_dir), "-o",
                        str(tmp_path / "r.md"), "--format", "md", "--targets", "7e10"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "r.md").read_text()
    pngs = list((tmp_path / "r_files").glob("*.png"))
    assert len(pngs) >= 6 and all(f"r_files/{p.name}" in md for p in pngs)
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
    bad = subprocess.run([sys.executable, "-m", "muonscope.cli", "report", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_too_few_sizes_still_renders_with_reason(sweep_dir, tmp_path):
    one = sorted(p for p in sweep_dir.iterdir() if p.is_dir())[:1]
    text = build_report(one, tmp_path / "one.html").read_text()
    assert "No power-law fits" in text and "3 or more model sizes" in text
    with pytest.raises(ConfigError):
        build_report(one, tmp_path / "x.pdf", fmt="pdf")

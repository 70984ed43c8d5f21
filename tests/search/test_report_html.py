"""report.html as a person sees it: rendered by headless Chromium, the three plots drawn."""
import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package "
                                "`chromium`; `make setup` installs it when run as root)")


def chromium(tmp_path, *args):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_is_self_contained(searched):
    text = (searched[0] / "report.html").read_text()
    assert not re.search(r"(src|href|url)\s*[=(]\s*[\"']?\s*(https?:|//)", text)  # nothing fetched from a network
    assert "<script" not in text and "<link" not in text and "<img" not in text


def test_plots_render_in_chromium(searched, tmp_path):
    page = (searched[0] / "report.html").as_uri()
    dom = chromium(tmp_path, "--dump-dom", page).stdout
    for figure in ("pareto", "sensitivity", "latency"):
        start = dom.index(f"id=\"{figure}\"")
        block = dom[start:dom.index("</figure>", start)]
        assert "<svg" in block and block.count("<path") >= 3, figure
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2600", page)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]  # (H, W, 3) in 0..1
    coloured = ((pixels.max(-1) - pixels.min(-1)) > 0.2).mean()  # share of clearly coloured pixels (plots)
    assert coloured > 0.01, coloured

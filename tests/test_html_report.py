"""report/index.html: the summary's figures, tables and numbers, offline; rendered in headless Chromium.

The browser test needs Chromium (Debian package ``chromium``; ``.ci/run`` installs it). Without
one it is skipped with a message, unless ``LATENTGEO_REQUIRE_BROWSER=1`` (set by ``.ci/run``),
where a missing browser is a failure. ``LATENTGEO_BROWSER`` names a browser binary explicitly.
"""

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

import latentgeo as lg
from latentgeo.report import Subject, write_report
from latentgeo.report.html import render_html

FAST = dict(resolution=30, geodesic_grid=15, geodesic_max_nodes=48, geodesic_max_iter=8, geodesic_tol=1e-4,
            geodesic_classes=3, grid_n=8, walks_walkers=4, walks_steps=15)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page):
    p = _Tags()
    p.feed(page)
    return p.tags


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("html_report")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 24), torch.nn.Tanh(), torch.nn.Linear(24, 64)).double().eval()
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64)
    labels = torch.arange(120) % 3
    codes = centres[labels] + 0.4 * torch.randn(120, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        data = net(codes) + 0.05 * torch.randn(120, 64, generator=g, dtype=torch.float64)
    dec = lg.fit_rbf_variance(net, codes, data, n_centers=8, n_iter=100, random_state=0)
    summary = write_report(Subject(dec, codes, labels=labels, data=data, item_shape=(8, 8), name="toy"), None, None,
                           out, extra={"command": ["pytest", "html"]}, **FAST)
    return out, summary


def test_index_html_shows_every_section_figure_and_number(report):
    out, summary = report
    page = (out / "index.html").read_text()
    assert "index.html" in summary["files"]
    assert json.loads((out / "summary.json").read_text()) == summary
    tags = _tags(page)
    imgs = [a["src"] for t, a in tags if t == "img"]
    pngs = [f for f in summary["files"] if f.endswith(".png")]
    assert sorted(imgs) == sorted(pngs) and len(pngs) >= 4  # magnification, decoded grid, geodesics, strips
    assert all((out / src).is_file() for src in imgs)
    ids = {a.get("id") for t, a in tags if t == "section"}
    assert {f"sec-{s}" for s in summary["sections"]} <= ids
    # offline: no remote resource of any kind (no CDN, no fonts, no scripts)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    # the numbers are the summary's, the skipped sections say why, the timings are there
    mag = summary["magnification"]["on_data"]["median"]
    assert f"{mag:.4g}" in page
    for r in summary["geodesics"]["length_ratio"]:
        assert f"{r:.4g}" in page
    assert "Skipped: no model: the subject is a decoder and codes" in page
    for s in summary["sections"]:
        t = summary["timings"][f"{s}_s"]
        assert f"computed in {t:.3f} s" in page
    assert "data set (or codes) name, size and shape" in page  # what the section computed
    # written atomically: no temporary files left behind
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_render_html_tables_escape_and_per_item_columns():
    s = {"sections": ["a"], "a": {"pairs": [[0, 1], [0, 2], [1, 2]], "ratio": [0.5, 0.25, 0.125], "note": "<b>&"},
         "timings": {"a_s": 0.5, "train_s": 2.0}, "files": ["fig.png", "summary.json"], "command": ["x", "<y>"]}
    page = render_html(s, [("a", "the A section", ["fig.png"])])
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page and "&lt;y&gt;" in page
    # per-item lists of one length become one table with a row per item
    row = re.findall(r"<tr><td class=\"num\">(\d)</td><td class=\"short\">(.*?)</td><td class=\"num\">(.*?)</td></tr>", page)
    assert row == [("0", "0, 1", "0.5"), ("1", "0, 2", "0.25"), ("2", "1, 2", "0.125")]
    assert "train time" in page and "2.00 s" in page
    assert page.count('<img src="fig.png"') == 1


def test_html_false_writes_no_page(tmp_path):
    net = torch.nn.Linear(2, 3).double()
    s = write_report(Subject(lg.DeterministicDecoder(net), torch.randn(10, 2, dtype=torch.float64)), None, None,
                     tmp_path, sections=["dataset"], html=False)
    assert not (tmp_path / "index.html").exists() and "index.html" not in s["files"]


# -- the page as a person sees it: headless Chromium -----------------------------------------------

PROBE = """
<script>
window.addEventListener('load', function () {
  var vw = document.documentElement.clientWidth, res = {viewport: vw, images: [], overflow: []};
  document.querySelectorAll('img').forEach(function (im) {
    var r = im.getBoundingClientRect(), c = im.parentElement.getBoundingClientRect();
    res.images.push({src: im.getAttribute('src'), ok: im.complete && im.naturalWidth > 0,
                     w: r.width, natural: im.naturalWidth, fits: r.right <= c.right + 1 && r.right <= vw + 1});
  });
  res.pageScroll = document.documentElement.scrollWidth - vw;
  document.querySelectorAll('main *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.right > vw + 1) res.overflow.push(el.tagName + ' right=' + r.right);
    if (el.classList.contains('tw') && el.scrollWidth > el.clientWidth + 1)
      res.overflow.push('table in ' + (el.closest('section') || el.closest('header') || {}).id + ' wider than its box: '
                        + el.scrollWidth + ' > ' + el.clientWidth + ' (' + el.textContent.slice(0, 60) + ')');
  });
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(res);
  document.body.appendChild(pre);
});
</script>
"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND"]  # nothing resolves: the page must not need the network


def find_browser():
    for name in (os.environ.get("LATENTGEO_BROWSER"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable", "chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    b = find_browser()
    if b is None:
        msg = ("no Chromium found (install Debian's `chromium` package, or set LATENTGEO_BROWSER); "
               "the rendered-page test of report/index.html is skipped")
        if os.environ.get("LATENTGEO_REQUIRE_BROWSER") == "1":
            pytest.fail(msg.replace("is skipped", "is required here (LATENTGEO_REQUIRE_BROWSER=1)"))
        pytest.skip(msg)
    return b


def _chromium(browser, tmp_path, url, *extra, timeout=90):
    ud = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    ud.mkdir()
    r = subprocess.run([browser, *FLAGS, f"--user-data-dir={ud}", *extra, url], capture_output=True, text=True,
                       timeout=timeout)
    return r


@pytest.mark.parametrize("width", [1280, 720])
def test_index_html_in_headless_chromium(report, browser, tmp_path, width):
    out, summary = report
    page = (out / "index.html").read_text()
    probe = out / f"_probe_{width}.html"  # beside index.html, so the relative images resolve the same way
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    try:
        r = _chromium(browser, tmp_path, probe.as_uri(), f"--window-size={width},900", "--virtual-time-budget=15000",
                      "--dump-dom")
    finally:
        probe.unlink()
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no probe result from {browser} (rc {r.returncode}): {r.stderr[-2000:]}"
    res = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    pngs = [f for f in summary["files"] if f.endswith(".png")]
    assert sorted(i["src"] for i in res["images"]) == sorted(pngs)
    bad = [i for i in res["images"] if not i["ok"]]
    assert not bad, f"figures that did not load: {bad}"
    assert all(i["fits"] for i in res["images"]), res["images"]
    assert all(i["w"] > min(250, 0.3 * width) for i in res["images"]), res["images"]  # visible, not collapsed
    assert res["pageScroll"] <= 0 and not res["overflow"], res
    if width == 1280:  # a screenshot of the page as shown (look at it: tests/output or the tmp folder)
        shot = tmp_path / "index.png"
        _chromium(browser, tmp_path, (out / "index.html").as_uri(), "--window-size=1280,3200", f"--screenshot={shot}")
        assert shot.is_file()
        import matplotlib.image

        img = matplotlib.image.imread(shot)
        assert img.shape[1] == 1280 and img[..., :3].std() > 0.05  # drawn, not blank
        keep = os.environ.get("LATENTGEO_KEEP_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)

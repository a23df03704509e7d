"""The report opens in headless Chromium: every plot image decodes (naturalWidth > 0) and nothing on the page
raises an error. A probe script is put at the top of a copy of the page; it records error events (script
errors and failed resource loads, captured) and writes its verdict into the document title, which
``--dump-dom`` hands back. Two damaged copies prove the probe can fail."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.report import write_report

PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  window.__errs.push(e.message || ('resource ' + (e.target && e.target.tagName)));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.title = (bad.length || window.__errs.length ? 'FAIL' : 'OK') + ' imgs=' + imgs.length +
    ' bad=' + bad.length + ' errors=' + window.__errs.length;
});
</script>"""


def chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium package")
    return exe


def probe(page: Path, tmp: Path) -> tuple[str, str]:
    """Open ``page`` (with the probe injected) in headless Chromium; return (title, stderr)."""
    html = page.read_text(encoding="utf-8")
    probed = tmp / f"probed-{page.name}"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    profile = tmp / f"profile-{page.stem}"
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
         "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"<title>(.*?)</title>", proc.stdout, re.S)
    assert m, proc.stdout[:2000]
    return m.group(1).strip(), proc.stderr


def test_report_renders_in_chromium(demo_db, tmp_path):
    db, session = demo_db
    page, _ = write_report(session, db=db, out=tmp_path / "report.html", n_surrogates=20)
    n_imgs = page.read_text().count("<img ")
    assert n_imgs >= 10
    title, stderr = probe(page, tmp_path)
    assert title == f"OK imgs={n_imgs} bad=0 errors=0", title
    assert "Uncaught" not in stderr

    # the probe can fail: a damaged plot, and a script error
    text = page.read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    title, _ = probe(broken, tmp_path)
    assert title.startswith("FAIL") and " bad=1 " in title, title
    erring = tmp_path / "erring.html"
    erring.write_text(text.replace("</body>", "<script>undefinedFunction();</script></body>"))
    title, stderr = probe(erring, tmp_path)
    assert title.startswith("FAIL") and title.endswith("errors=1"), title

"""The reports open in headless Chromium: a non-blank page, no console errors, every section.

Needs Debian's ``chromium`` (``apt-get install -y chromium``). Without it these tests
fail, saying so; ``RELCOMP_SKIP_BROWSER=1`` turns that into an explicit skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from relcomp.reports import write_explanation_report, write_report
from tests.reports import browser
from tests.reports.browser import Rendered, render
from tests.reports.synthetic import SECTION_TITLES, make_explanation, make_run_folder


def _assert_drawn(rendered: Rendered) -> None:
    pixels = rendered.pixels()
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20, "the screenshot is (nearly) one colour"
    not_white = (pixels < 245).any(axis=2).mean()
    assert not_white > 0.05, f"only {not_white:.1%} of the page is drawn"


def test_compression_report_renders_in_chromium(run_folder: Path) -> None:
    rendered = render(write_report(run_folder))
    _assert_drawn(rendered)
    assert rendered.errors == []
    assert rendered.headings() == list(SECTION_TITLES)
    assert rendered.dom.count('<img src="data:image/png;base64,') == 5


def test_explanation_report_with_hostile_text_renders_without_running_it(tmp_path: Path) -> None:
    hostile = "<script>console.error('escaped?')</script>\"<img src=x onerror=alert(1)>"
    page = write_explanation_report(
        tmp_path, [make_explanation(f"what {hostile}", f"text {hostile}")], model=hostile
    )
    rendered = render(page)
    _assert_drawn(rendered)
    assert rendered.errors == []  # an injected script or image would log an error (CSP)
    assert rendered.headings()[0] == "How to read this report"
    assert rendered.headings()[1].startswith("Pair 1: what <script>")  # shown as text
    assert "<script" not in rendered.dom.lower()


def test_the_browser_check_sees_errors_and_blank_pages(tmp_path: Path) -> None:
    """The checks above could fail: a console error, a blocked script and a blank page show up."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>x</title></head><body>"
        "<h2>Only</h2><script>console.error('boom')</script></body></html>",
        encoding="utf-8",
    )
    rendered = render(broken)
    assert any("boom" in error for error in rendered.errors)
    assert rendered.headings() == ["Only"]
    assert rendered.pixels().std() < 20  # almost all white

    folder = make_run_folder(tmp_path / "run")
    page = write_report(folder)
    injected = page.read_text(encoding="utf-8").replace(
        "</main>", "<script>document.title = 'ran'</script></main>"
    )
    page.write_text(injected, encoding="utf-8")
    blocked = render(page)
    assert any("Content Security Policy" in error for error in blocked.errors)
    assert np.asarray(blocked.pixels()).std() > 20


def test_a_missing_chromium_fails_unless_skipping_is_asked_for(monkeypatch) -> None:

    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    monkeypatch.delenv("RELCOMP_SKIP_BROWSER", raising=False)
    with pytest.raises(
        pytest.fail.Exception, match=r"install chromium \(apt-get install -y chromium\)"
    ):
        browser.require_chromium()
    monkeypatch.setenv("RELCOMP_SKIP_BROWSER", "1")
    with pytest.raises(pytest.skip.Exception, match="RELCOMP_SKIP_BROWSER=1"):
        browser.require_chromium()

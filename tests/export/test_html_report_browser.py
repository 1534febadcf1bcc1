"""report.html in a real headless Chromium: loads without console errors, shows the report's numbers,
filters change the gallery, a screenshot is not blank, nothing is fetched from the network.

Needs the Debian ``chromium`` package (`make browser` installs it; `.ci/run` calls it before the tests).
Skipped, with the reason, where no Chromium is found ($SAPNET_CHROMIUM names another executable).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from stages.export.config import ExportConfig
from stages.export.run import run_export
from tests.browser import Browser, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (install it with `make browser`, i.e. the Debian package `chromium`, "
    "or set SAPNET_CHROMIUM)",
)

ALL = ("sapnet", "top1", "largest", "psm", "oracle")


@pytest.fixture(scope="module")
def page(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("browser")
    res = run_export(
        ExportConfig(
            store=tiny.store_path,
            out=out / "pseudo.json",
            selections=tiny.sel_dir,
            selectors=ALL,
            gt=tiny.gt_path,
            report=out / "report",
            images=tiny.images_dir,
        )
    )
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as browser:
        browser.open(res.html.path.as_uri())
        browser.settle()
        yield browser, res


def _set(browser: Browser, select_id: str, value: str) -> None:
    browser.evaluate(
        f"(() => {{ const s = document.getElementById({json.dumps(select_id)}); s.value = "
        f"{json.dumps(value)}; s.dispatchEvent(new Event('change')); }})()"
    )


def _cards(browser: Browser) -> list[int]:
    return browser.evaluate(
        "[...document.querySelectorAll('#gallery .card')].map(c => Number(c.dataset.image))"
    )


def test_loads_without_console_errors_or_network(page):
    browser, _ = page
    assert browser.console_errors() == []
    assert browser.evaluate("document.title") == "sapnet pseudo labels"
    urls = browser.requested_urls()
    assert urls and all(u.startswith(("file:", "data:")) for u in urls), urls
    # the overlay thumbnails of the cards on screen loaded from report_files/
    loaded = browser.evaluate(
        "[...document.querySelectorAll('#gallery .tile img')].filter(i => i.complete && "
        "i.naturalWidth > 0).length"
    )
    assert loaded == 2 * len(ALL)


def test_quality_table_holds_the_report_numbers(page):
    browser, res = page
    cells = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#quality td')].map(td => "
        "[td.dataset.selector + '|' + td.dataset.key, td.textContent]))"
    )
    for col in res.report["selectors"]:
        for key, value in (
            ("mask_iou.all", col["mask_iou"]["all"]),
            ("box_iou.all", col["box_iou"]["all"]),
            ("errors.group", col["errors"]["group"]),
            ("errors.local", col["errors"]["local"]),
            ("ap_segm.AP", col["ap_segm"]["AP"]),
        ):
            assert cells[f"{col['name']}|{key}"] == f"{100 * value:.1f}", (col["name"], key)


def test_filters_and_sorting_change_the_gallery(page):
    browser, _ = page
    assert sorted(_cards(browser)) == [1, 2]
    assert browser.evaluate("document.getElementById('count').textContent") == (
        "showing 2 of 2 image(s)"
    )
    _set(browser, "cat", "1")  # cats: only image 1 (the cat of image 2 is a crowd region)
    assert _cards(browser) == [1]
    _set(browser, "cat", "")
    _set(browser, "selector", "largest")
    # the whole-image mask covers the other cat: group errors on image 1
    _set(browser, "filter", "g")
    assert _cards(browser) == [1]
    _set(browser, "selector", "sapnet")  # sapnet picks the GT masks: no errors anywhere
    assert _cards(browser) == []
    _set(browser, "filter", "")
    _set(browser, "sort", "n")
    assert _cards(browser) == [1, 2]  # 3 objects before 1
    assert browser.console_errors() == []


def test_objects_show_proposals_and_picks(page):
    browser, _ = page
    browser.evaluate(
        "(() => { const d = document.querySelector('.card[data-image=\"1\"] details'); "
        "d.open = true; d.dispatchEvent(new Event('toggle')); })()"
    )
    browser.settle(0.5)
    rows = browser.evaluate(
        "[...document.querySelectorAll('.card[data-image=\"1\"] .obj')].map(o => o.dataset.ann)"
    )
    assert sorted(rows) == ["11", "12", "13"]
    picked = browser.evaluate(
        "[...document.querySelector('.obj[data-ann=\"11\"] .props').rows[1].cells].slice(1)"
        ".map(c => [...c.querySelectorAll('.badge')].map(b => b.textContent).sort().join(','))"
    )
    assert picked == ["oracle,sapnet", "psm", "", "top1", "largest", ""]
    strips = browser.evaluate(
        "[...document.querySelectorAll('.obj img.strip')].map(i => i.naturalWidth)"
    )
    assert len(strips) == 3 and all(w > 0 for w in strips)
    assert browser.console_errors() == []


def test_screenshot_is_not_blank(page):
    browser, _ = page
    png = browser.screenshot()
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.shape[0] > 100 and img.shape[1] > 100
    gray = img.mean(axis=2)
    assert gray.std() > 10  # text, tables and charts, not a flat page
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50

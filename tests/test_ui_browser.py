"""The review page in a real headless browser: Debian's chromium driven by Playwright (``executable_path``:
Playwright cannot download its own browsers here; ``.ci/run`` installs the chromium package when absent).

It opens a preselected comparison, rates a pair with the keyboard, checks the stored row, and saves
screenshots of the compare view and the leaderboard under the test's output folder. With
``SLAS_UI_SCREENSHOTS=DIR`` set it also writes them to DIR (how the README's images are made:
``SLAS_UI_SCREENSHOTS=docs/images pytest tests/test_ui_browser.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from slas.platform.db import open_store
from slas.testing.postgres import free_port
from slas.testing.review import make_review_set
from slas.ui.app import launch
from slas.ui.handlers import next_pair, rate

A, B, D = "base", "slas/iter_40", "dancegrpo/iter_40"
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def _chromium() -> str:
    found = next((p for p in CHROMIUM if Path(p).is_file()), None) or shutil.which("chromium")
    if found is None:
        pytest.fail("no chromium binary (apt-get install chromium; .ci/run installs it)", pytrace=False)
    return found


def _idle(page) -> None:
    """Wait until no event is queued or running (Gradio shows 'processing | 0.5s' / 'queue: 1/1' meanwhile)."""
    page.wait_for_function("() => !/processing \\||queue: \\d/.test(document.body.innerText)")
    page.wait_for_timeout(300)  # and let images fade in


def _save(page, name: str, out: Path) -> Path:
    _idle(page)
    path = out / name
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("SLAS_UI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / name)
    return path


def test_rate_a_pair_with_the_keyboard_in_chromium(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    store = open_store(f"sqlite:///{tmp_path / 'slas.db'}")
    set_id = make_review_set(store, tmp_path / "set", checkpoints=(A, B, D), editing=True,
                             prompts=("hold the bottle in the right hand", "hold the mug with both hands"),
                             seeds=(0, 1, 2), name="editing: base vs slas vs dancegrpo")
    rank = {B: 0, A: 1, D: 2}  # earlier ratings for the leaderboard: these raters prefer slas, then base
    for rater in ("bob", "cy"):
        for a, b in ((A, B), (B, D), (A, D)):
            for k in range(3):
                v = next_pair(store, set_id, a, b, rater)
                better_left = rank[v.left_label] < rank[v.right_label]
                choice = "tie" if k == 2 and rater == "cy" else "a" if better_left else "b"
                if D in (a, b) and k == 1 and rater == "cy":
                    choice = "both_bad"
                rate(store, set_id, v.left.id, v.right.id, rater=rater, choice=choice,
                     tags=["duplicate product", "over-saturated"] if D in (v.left_label, v.right_label) else None)
    before = len(store.list_ratings(sample_set_id=set_id))
    port = free_port()
    demo = launch(store, port=port, block=False, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15_000)
            page.goto(f"http://127.0.0.1:{port}/?set={set_id}&a={A}&b={B}")
            expect(page.locator("#ckpt-b input")).to_have_value(B)  # the link preselected the comparison
            page.locator("#rater input, #rater textarea").first.fill("ann")
            page.locator("#start").click()
            expect(page.locator("#progress")).to_contain_text("Pair 1 of 6")
            expect(page.locator("#image-a img")).to_be_visible()
            page.evaluate("document.activeElement && document.activeElement.blur()")  # keys act outside text boxes
            page.get_by_label("extra hand").check()  # the focus stays on the checkbox: keys still rate
            page.keyboard.press("2")  # right better
            expect(page.locator("#progress")).to_contain_text("Pair 2 of 6")
            expect(page.locator("#last-rating")).to_contain_text("Stored: right better")
            rows = store.list_ratings(sample_set_id=set_id, rater="ann")
            assert len(rows) == 1 and len(store.list_ratings(sample_set_id=set_id)) == before + 1
            assert (rows[0].choice, rows[0].tags) == ("b", ["extra hand"])
            right = store.list_samples(set_id)
            shown = {s.id: s.checkpoint_label for s in right}
            expect(page.locator("#last-rating")).to_contain_text(f"right was {shown[rows[0].other_sample_id]}")
            compare = _save(page, "review-compare.png", tmp_path)

            page.get_by_role("tab", name="Leaderboard").click()
            page.locator("#lb-refresh").click()
            expect(page.locator("#lb-table")).to_contain_text(D)
            table = page.locator("#lb-table").inner_text()
            assert table.index(B) < table.index(A) < table.index(D)  # best Bradley–Terry score first
            expect(page.locator("#lb-raters")).to_contain_text("by 3 rater(s)")
            board = _save(page, "review-leaderboard.png", tmp_path)
            browser.close()
    finally:
        demo.close()
        store.close()
    assert compare.stat().st_size > 10_000 and board.stat().st_size > 10_000

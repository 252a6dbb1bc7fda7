"""The rating page in a real headless Chromium (Debian's ``chromium`` and ``chromedriver``, through Selenium;
nothing downloaded): a rater votes with the mouse and the keyboard, reloads and resumes, and the database holds
exactly those votes; two raters at once keep their own state.

Without the browser these tests fail (``.ci/run`` installs it); ``PT2I_SKIP_BROWSER=1`` skips them instead.
``PT2I_HUMANEVAL_SCREENSHOT=docs/humaneval.png`` also saves the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from evaluation.humaneval.serve import running
from evaluation.humaneval.study import layout, load_study
from tests.humaneval_utils import make_study, stored

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("PT2I_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PT2I_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture
def browser():
    """Factory: ``open() -> WebDriver`` (headless Chromium, its own profile); all quit at teardown."""
    if os.environ.get("PT2I_SKIP_BROWSER") == "1":
        pytest.skip("PT2I_SKIP_BROWSER=1: browser tests skipped")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"no {', '.join(missing)}: install Debian's chromium and chromium-driver (as .ci/run does), "
            "or set PT2I_SKIP_BROWSER=1"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def open_browser():
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=820,940",
            "--no-first-run",
            "--disable-extensions",
        ):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        driver.implicitly_wait(2)  # the page is local: an element missing for 2 s is missing
        drivers.append(driver)
        return driver

    yield open_browser
    for d in drivers:
        d.quit()


def _by(kind: str):
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def _text(driver, element_id: str) -> str:
    return driver.find_element(_by("ID"), element_id).text


def _pair(driver) -> str:
    return driver.find_element(_by("NAME"), "pair").get_attribute("value")


CURRENT = """var done = document.getElementById("done"), pair = document.querySelector("input[name=pair]");
return done ? "done" : (pair ? pair.value : null);"""


def _wait_for_pair(driver, previous: str) -> str:
    """Wait until the page shows another pair than ``previous`` (or the end page): its id, or "done"."""
    from selenium.common.exceptions import JavascriptException
    from selenium.webdriver.support.ui import WebDriverWait

    def moved_on(d):
        now = d.execute_script(CURRENT)
        return now if now not in (None, previous) else None

    wait = WebDriverWait(driver, 15, poll_frequency=0.05, ignored_exceptions=(JavascriptException,))
    return wait.until(moved_on)


def vote_with_mouse(driver, quality: str, text: str) -> str:
    pid = _pair(driver)
    driver.find_element(_by("ID"), f"quality-{quality}").click()
    driver.find_element(_by("ID"), f"text-{text}").click()
    driver.find_element(_by("ID"), "submit").click()
    _wait_for_pair(driver, pid)
    return pid


KEYS = {"quality": dict(zip(("left", "same", "right"), "asd")), "text": dict(zip(("left", "same", "right"), "jkl"))}


def vote_with_keys(driver, quality: str, text: str) -> str:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    pid = _pair(driver)
    ActionChains(driver).send_keys(KEYS["quality"][quality], KEYS["text"][text], Keys.ENTER).perform()
    _wait_for_pair(driver, pid)
    return pid


def _session(driver) -> str:
    return _text(driver, "session")


def test_rater_votes_with_mouse_and_keyboard_reloads_and_resumes(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    study_dir = make_study(tmp_path, n_prompts=4, checks=2)
    study = load_study(study_dir)
    total = len(study.pairs)
    expected: dict[str, tuple[str, str]] = {}
    with running(study_dir) as url:
        driver = browser()
        driver.get(url)
        driver.find_element(_by("ID"), "start").click()
        sid = _session(driver)
        order = [pid for pid, _ in layout(study, sid)]
        assert _pair(driver) == order[0] and _text(driver, "progress") == f"Pair 1 of {total}"
        assert _text(driver, "prompt") == study.by_id[order[0]]["prompt"]
        expected[vote_with_mouse(driver, "left", "right")] = ("left", "right")
        assert _text(driver, "saved") == f"Saved: 1 of {total} answered"
        expected[vote_with_keys(driver, "same", "left")] = ("same", "left")
        # one question answered, then Enter: the form asks for the other one; nothing is sent
        ActionChains(driver).send_keys("d", Keys.ENTER).perform()
        time.sleep(0.5)
        assert driver.execute_script('return document.getElementById("vote").checkValidity()') is False
        assert _pair(driver) == order[2] and len(stored(study_dir)[sid]) == 2
        driver.refresh()  # mid-study: the same pair again, nothing resent
        assert _pair(driver) == order[2] and _text(driver, "progress") == f"Pair 3 of {total}"
        expected[vote_with_keys(driver, "right", "same")] = ("right", "same")
        driver.get(url)  # the start page offers to continue (cookie)
        driver.find_element(_by("ID"), "continue").click()
        assert _pair(driver) == order[3]
        driver.quit()

        driver = browser()  # another browser, by the session id: continues at pair 4
        driver.get(url)
        driver.find_element(_by("ID"), "resume-session").send_keys(sid, Keys.ENTER)
        assert _text(driver, "progress") == f"Pair 4 of {total}" and _pair(driver) == order[3]
        expected[vote_with_mouse(driver, "same", "same")] = ("same", "same")
        expected[vote_with_keys(driver, "left", "left")] = ("left", "left")
        expected[vote_with_mouse(driver, "right", "left")] = ("right", "left")
        assert driver.find_element(_by("ID"), "done").is_displayed()
    assert list(expected) == order
    assert stored(study_dir) == {sid: expected}


def test_two_raters_at_once_keep_their_own_state(tmp_path, browser):
    study_dir = make_study(tmp_path, n_prompts=3, checks=1)
    study = load_study(study_dir)
    with running(study_dir) as url:
        a, b = browser(), browser()
        for d in (a, b):
            d.get(url)
            d.find_element(_by("ID"), "start").click()
        sa, sb = _session(a), _session(b)
        assert sa != sb
        va = [vote_with_mouse(a, "left", "left")]
        vb = [vote_with_keys(b, "right", "same")]
        va.append(vote_with_keys(a, "same", "right"))
        va.append(vote_with_mouse(a, "right", "right"))
        assert _text(a, "progress") == "Pair 4 of 4" and _text(b, "progress") == "Pair 2 of 4"
        assert _pair(b) == layout(study, sb)[1][0]  # a's votes do not move b
        b.refresh()
        assert _session(b) == sb and _text(b, "progress") == "Pair 2 of 4"
        for d in (a, b):
            d.get(url)
        assert a.find_element(_by("ID"), "continue").text.endswith(sa)
        assert b.find_element(_by("ID"), "continue").text.endswith(sb)
    assert va == [p for p, _ in layout(study, sa)[:3]] and vb == [layout(study, sb)[0][0]]
    assert stored(study_dir) == {
        sa: {va[0]: ("left", "left"), va[1]: ("same", "right"), va[2]: ("right", "right")},
        sb: {vb[0]: ("right", "same")},
    }


def test_screenshot(tmp_path, browser):
    study_dir = make_study(tmp_path, n_prompts=3, checks=0)
    with running(study_dir) as url:
        driver = browser()
        driver.get(url)
        driver.find_element(_by("ID"), "start").click()
        vote_with_mouse(driver, "left", "left")
        ours = "right" if dict(layout(load_study(study_dir), _session(driver)))[_pair(driver)] else "left"
        driver.find_element(_by("ID"), f"quality-{ours}").click()
        driver.find_element(_by("ID"), f"text-{ours}").click()
        shot = tmp_path / "humaneval.png"
        driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 5000
    target = os.environ.get("PT2I_HUMANEVAL_SCREENSHOT")
    if target:
        shutil.copyfile(shot, Path(target))

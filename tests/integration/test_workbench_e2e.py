"""The reviewers' workbench end to end, as people use it, in a real headless Chromium.

A worker scores events from Kafka and writes alerts to Redis; ``txwatch ui`` runs as its own
process. A reviewer signs in, watches an alert arrive on the open dashboard, claims the
case, disposes it with a note; an approver approves; the audit trail shows both; and
``txwatch labels export`` holds the label from the reviews topic. Screenshots go to the
test's directory (and to ``TXWATCH_SCREENSHOTS`` when set: the README's come from there).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from playwright.sync_api import expect

from stream.adapters.kafka import ensure_topics
from stream.events.labels import read_labels
from tests.integration.conftest import ROOT, env_for, produce_events, start_worker, wait_processed
from txwatch.cli import main
from txwatch.local.embedded import die_with_parent, free_port, wait_for_port

pytestmark = pytest.mark.integration
PASSWORDS = {"analyst": "analyst-password-1", "lead": "lead-password-1"}


def _sign_in(page, base: str, name: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


@pytest.fixture
def workbench(settings, tmp_path, monkeypatch):
    """``txwatch ui`` on the test's Redis and Kafka, a SQLite file, and two users."""
    tag = settings.redis_prefix
    db_url = f"sqlite:///{tmp_path / 'workbench.db'}"
    s = settings.model_copy(update={"database_url": db_url, "reviews_topic": f"reviews-{tag}",
                                    "ui_port": free_port()})
    ensure_topics(s.model_copy(update={"input_topics": s.reviews_topic}))
    monkeypatch.setenv("TXWATCH_DATABASE_URL", db_url)
    for name, role in (("analyst", "reviewer"), ("lead", "approver")):
        monkeypatch.setenv("WB_PASSWORD", PASSWORDS[name])
        assert main(["users", "add", name, "--role", role, "--password-env", "WB_PASSWORD"]) == 0
    log = open(tmp_path / "ui.log", "wb")
    ui = subprocess.Popen([sys.executable, "-m", "txwatch", "ui"], env=env_for(s), cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    base = f"http://127.0.0.1:{s.ui_port}"
    try:
        wait_for_port(s.ui_port, ui, "workbench", tmp_path / "ui.log", timeout=30)
        yield s, base
    finally:
        ui.terminate()
        ui.wait(15)
        log.close()


def _shot(page, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    out = os.environ.get("TXWATCH_SCREENSHOTS")
    if out:
        os.makedirs(out, exist_ok=True)
        shutil.copy(path, os.path.join(out, f"{name}.png"))


def test_reviewer_works_a_live_alert_and_the_label_reaches_training(workbench, settings, small_events, tmp_path,
                                                                     browser_page, monkeypatch):
    s, base = workbench
    page = browser_page
    page.set_viewport_size({"width": 1360, "height": 900})
    worker = start_worker(s, "plain", tmp_path / "worker.log")
    try:
        _sign_in(page, base, "analyst")
        page.wait_for_selector("#live-state:has-text('live')", timeout=15_000)
        events = small_events[:20_000]
        produce_events(s, events)
        wait_processed(s, len(events), proc=worker)
        # A worker's alert appears on the open dashboard without a reload.
        page.wait_for_selector("tr.live-alert", timeout=20_000)
        assert page.locator("tr.live-alert").count() >= 1
        # The figures refresh by themselves once the case builder has made cases.
        expect(page.locator("#fig-open")).not_to_have_text("0", timeout=20_000)
        _shot(page, tmp_path, "workbench-dashboard")

        # The queue lists the cases the case builder made; open the riskiest.
        page.goto(base + "/cases")
        page.wait_for_selector("#queue tbody tr a", timeout=20_000)
        _shot(page, tmp_path, "workbench-queue")
        page.click("#queue tbody tr a")
        case_url = page.url
        case_id = int(case_url.rsplit("/", 1)[1])
        assert page.locator("ul.reasons li").count() >= 1      # reasons in words
        page.click("#claim")
        page.wait_for_selector("#dispose-case")
        page.select_option("#case-decision-select", "confirmed")
        page.fill("#case-note", "New device, new country, balance drained within minutes: takeover.")
        page.click("#dispose-case-button")
        page.wait_for_selector("#case-status:has-text('pending approval')")
        _shot(page, tmp_path, "workbench-case")

        # Four-eyes: the reviewer is not offered the approval; a second person approves.
        page.click("form.who button")
        _sign_in(page, base, "lead")
        page.goto(case_url)
        page.fill("#approve-note", "Agreed; file the SAR.")
        page.click("#approve")
        page.wait_for_selector("#case-status:has-text('closed')")
        audit_actions = page.locator("#case-audit tbody").inner_text()
        assert "analyst" in audit_actions and "dispose_case" in audit_actions
        assert "lead" in audit_actions and "approve" in audit_actions
        page.goto(base + "/audit?verify=1")
        assert "Chain intact" in page.locator("#verdict").inner_text()
        _shot(page, tmp_path, "workbench-audit")
    finally:
        worker.terminate()
        worker.wait(20)

    # The disposition is on the reviews topic: `labels export` holds it, with label 1.
    # (the UI process publishes through its outbox within a second; the export retries until then)
    monkeypatch.setenv("TXWATCH_KAFKA_URL", s.kafka_url)
    monkeypatch.setenv("TXWATCH_REVIEWS_TOPIC", s.reviews_topic)
    out = tmp_path / "labels.jsonl"
    deadline = time.monotonic() + 30
    while True:
        assert main(["labels", "export", "--out", str(out), "--source", "kafka"]) == 0
        labels = read_labels(out)
        if labels or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert labels and set(labels.values()) == {1}
    text = out.read_text()
    assert re.search(rf'"case_id":{case_id}\b', text) and '"reviewer":"analyst"' in text

"""Headless Chromium: the admin index and a function page draw their charts; screenshots go to
docs/screenshots/. Skipped when chromium or chromedriver is missing (CI installs them).

The data: `manage.py generate_executions` runs a few hundred real executions through the dispatch
path and a real worker (the last minutes), over a day of history added to the same functions;
the dashboards then read the rollup tables and the raw tail.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from functions.models import Function
from metrics.generate import PROFILES
from metrics.models import ExecutionRollup
from metrics.rollup import rollup_advance
from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else \
    shutil.which("chromedriver")
SHOTS = ROOT / "docs" / "screenshots"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="headless-browser test skipped: chromium and chromedriver are not "
                              "installed (apt-get install -y chromium chromium-driver)"),
]


def history(now):
    """A day of earlier executions (before the last hour) for the demo functions."""
    rows = []
    for n, (profile, count) in enumerate(zip(PROFILES, (1500, 1000, 500), strict=True)):
        function = Function.objects.get(name=profile.name)
        trigger = function.triggers.get()
        for i in range(count):
            dispatched = now - timedelta(hours=1, seconds=(i * 82800 // count) + n)
            status = ExecutionStatus.SUCCEEDED
            if i % 23 == 0:
                status = ExecutionStatus.FAILED
            elif i % 97 == 0:
                status = ExecutionStatus.TIMED_OUT
            started = dispatched + timedelta(milliseconds=4 + i % 30)
            run = profile.sleep * 2 * (1 + (i % 17) / 8) * (3 if i % 11 == 0 else 1)
            cold = i % 9 == 0
            rows.append(Execution(
                task_id=str(uuid.uuid4()), function=function,
                version_id=function.active_version_id, trigger=trigger, status=status,
                runtime="local", cold=cold, worker="worker-1@host",
                init_seconds=0.03 + (i % 7) * 0.01 if cold else None,
                cpu_seconds=run * 0.6, peak_memory_bytes=30_000_000,
                dispatched_at=dispatched, started_at=started,
                finished_at=started + timedelta(seconds=run)))
    Execution.objects.bulk_create(rows, batch_size=2000)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1900", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def charts_drawn(driver, ids):
    from selenium.webdriver.common.by import By

    for chart_id in ids:
        chart = driver.find_element(By.ID, chart_id)
        assert chart.is_displayed(), chart_id
        size = chart.size
        assert size["width"] > 300 and size["height"] > 150, (chart_id, size)
        assert len(chart.find_elements(By.CSS_SELECTOR, ".kf-point")) > 5, chart_id


def test_dashboard_and_function_page_in_chromium(browser, live_server, django_user_model,
                                                 celery_worker_process):
    from selenium.webdriver.common.by import By

    django_user_model.objects.create_superuser("admin", "a@example.com", "admin-password-1")
    out = StringIO()
    call_command("generate_executions", "--functions", "3", "--count", "300", "--timeout", "120",
                 stdout=out, stderr=StringIO())
    assert "300 of 300 finished" in out.getvalue(), out.getvalue()
    real = Execution.objects.filter(function__name__startswith="demo-")
    assert set(real.values_list("status", flat=True)) >= {"succeeded", "failed"}
    assert real.filter(cold=True, init_seconds__gt=0).exists()
    assert real.filter(cold=False, init_seconds=None).exists()
    history(timezone.now())
    rollup_advance()
    assert ExecutionRollup.objects.filter(width=3600).exists()
    function = Function.objects.get(name="demo-report")
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("admin-password-1")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    browser.get(f"{live_server.url}/admin/")
    assert "Platform" in browser.find_element(By.ID, "kf-dashboard").text
    charts_drawn(browser, ["platform-invocations", "platform-latency", "platform-cold",
                           "platform-cpu"])
    assert browser.find_element(By.ID, "content-main").is_displayed()  # the app list stays
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS / "dashboard.png"))

    browser.get(f"{live_server.url}/admin/functions/function/{function.pk}/change/")
    dashboard = browser.find_element(By.ID, "kf-dashboard")
    assert "demo-report" in dashboard.text and "cold-start time" in dashboard.text.lower()
    prefix = f"function-{function.pk}"
    charts_drawn(browser, [f"{prefix}-invocations", f"{prefix}-latency", f"{prefix}-cold",
                           f"{prefix}-cpu"])
    browser.execute_script("arguments[0].scrollIntoView();", dashboard)
    assert browser.save_screenshot(str(SHOTS / "function-metrics.png"))

"""The dashboard in a real headless Chromium: servers shown, and a change pushed without a reload."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.browser import PHONE, OpenBrowser
from tests.harness import Endpoints, LiveBalancer, ProcessGroup, start_balancer, wait_until
from tests.test_http_gateway import LiveGateway, start_gateway
from tests.test_metrics import live_samples


@pytest.fixture
def browser(chromium: OpenBrowser) -> webdriver.Chrome:
    """Headless Chromium at a phone's width: the page must work there."""
    return chromium(*PHONE)


def row_states(driver: webdriver.Chrome) -> dict[str, str]:
    """Server id -> state as the page shows it."""
    rows = "#servers tbody tr"
    script = f"return [...document.querySelectorAll('{rows}')].map(r => [r.dataset.serverId, r.dataset.state]);"
    return dict(driver.execute_script(script))


@pytest.mark.timeout(90)
def test_dashboard_shows_servers_and_a_pushed_server_down(
    balancer: LiveBalancer, procs: ProcessGroup, browser: webdriver.Chrome
):
    """Three servers appear; after POST /server_down/1 the page shows server 1 down, pushed, without a reload."""
    gateway: LiveGateway = start_gateway(procs)
    configured = gateway.call("POST", "/configure", {"num_servers": 3, "num_clients": 0, "requests_per_client": 0})
    assert configured.status == 200
    browser.get(gateway.url + "/")
    shown = wait_until(lambda: row_states(browser) if len(row_states(browser)) == 3 else None, 20, "three rows")
    assert shown == {"0": "active", "1": "active", "2": "active"}
    wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", 10, "the event stream to be live")
    browser.execute_script("window.zlbNoReload = 'still the same page';")

    assert gateway.call("POST", "/server_down/1").status == 200
    wait_until(lambda: row_states(browser).get("1") == "down", 10, "server 1 shown down")
    assert row_states(browser) == {"0": "active", "1": "down", "2": "active"}
    assert browser.execute_script("return window.zlbNoReload;") == "still the same page"
    log = browser.find_element(By.ID, "log").text
    assert "Server 1 marked as down" in log
    # At a phone's width nothing spills sideways out of the page.
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1;")


@pytest.mark.timeout(90)
def test_dashboard_buttons_use_the_pasted_token(balancer: LiveBalancer, procs: ProcessGroup, browser: webdriver.Chrome):
    """With a token set the page shows the token box; Down answers 401 on its row until the token is pasted, then
    takes the server down."""
    token = "dashboard-token-0123456789abcdef"
    gateway = start_gateway(procs, env={"ZLB_HTTP_TOKEN": token})
    gateway.token = token
    assert (
        gateway.call("POST", "/configure", {"num_servers": 1, "num_clients": 0, "requests_per_client": 0}).status == 200
    )
    gateway.token = None
    browser.get(gateway.url + "/")
    wait_until(lambda: row_states(browser) == {"0": "active"}, 20, "server 0 shown")
    down = '#servers tr[data-server-id="0"] button[data-verb="down"]'
    assert browser.find_element(By.ID, "auth-box").is_displayed(), "the gateway asks for a token: the box shows"
    browser.find_element(By.CSS_SELECTOR, down).click()
    row_error = browser.find_element(By.CSS_SELECTOR, '#servers tr[data-server-id="0"] .row-error')
    wait_until(lambda: row_error.text.startswith("401"), 10, "a 401 on the row without the token")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "token-save").click()
    assert browser.execute_script("return sessionStorage.getItem('zlb-token');") == token
    wait_until(lambda: browser.find_element(By.CSS_SELECTOR, down).is_enabled(), 10, "the button after reconnect")
    browser.find_element(By.CSS_SELECTOR, down).click()
    wait_until(lambda: row_states(browser) == {"0": "down"}, 10, "server 0 shown down")
    assert balancer.servers()[0]["state"] == "down"


@pytest.mark.timeout(90)
def test_a_failing_journal_shows_on_the_page_and_in_metrics_until_it_recovers(
    procs: ProcessGroup, endpoints: Endpoints, tmp_path: Path, browser: webdriver.Chrome
):
    """The journal's directory removed under the balancer: the page shows an alert and /metrics says 0; back: gone."""
    folder = tmp_path / "journal-dir"
    folder.mkdir()
    start_balancer(procs, endpoints, 100, "--journal", str(folder / "zlb.journal"))
    gateway = start_gateway(procs)
    browser.get(gateway.url + "/")
    wait_until(lambda: browser.find_element(By.ID, "conn").text == "live", 20, "the event stream to be live")
    alerts = browser.find_element(By.ID, "alerts")
    assert not alerts.is_displayed()
    assert live_samples(gateway.call)[("zlb_journal_healthy", ())] == 1

    shutil.rmtree(folder)
    wait_until(lambda: alerts.is_displayed() and "Journal failing since" in alerts.text, 10, "the alert on the page")
    assert "was deleted" in alerts.text
    assert live_samples(gateway.call)[("zlb_journal_healthy", ())] == 0
    folder.mkdir()
    wait_until(lambda: not alerts.is_displayed(), 20, "the alert gone once the journal is written again")
    assert live_samples(gateway.call)[("zlb_journal_healthy", ())] == 1
    assert "is written again" in browser.find_element(By.ID, "log").text

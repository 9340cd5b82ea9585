"""The web console (issue 24) in headless Chromium at a desk's size and a phone's, and its API without one."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from http_gateway.history import COLUMNS
from tests.browser import DESK, PHONE, OpenBrowser
from tests.harness import LiveBalancer, ProcessGroup, wait_until
from tests.test_http_gateway import LiveGateway, start_gateway

# The seed's markers, which the page draws as icons: none may reach the screen as a character.
EMOJI = ("✅", "⚠", "❌")
TWO_SERVERS = {"num_servers": 2, "num_clients": 0, "requests_per_client": 0}


def send(gateway: LiveGateway, request_id: int, **extra: Any) -> None:
    body = {"client_id": 0, "request_id": request_id, "priority": 3, "cost_ms": 0, **extra}
    reply = gateway.call("POST", "/send_request", body)
    assert reply.status == 200, reply


def processed(gateway: LiveGateway) -> set[int]:
    return {r["request_id"] for r in gateway.get("/requests?status=processed")}


def server_cells(browser: webdriver.Chrome) -> dict[str, dict[str, str]]:
    """Server id -> {state, pid, host} as the page shows them."""
    script = """return [...document.querySelectorAll('#servers tbody tr')].map(r => [r.dataset.serverId, {
        state: r.dataset.state, pid: r.querySelector('.pid').textContent, host: r.querySelector('.host').textContent,
    }]);"""
    return dict(browser.execute_script(script))


def action(browser: webdriver.Chrome, server_id: int, verb: str) -> Any:
    return browser.find_element(
        By.CSS_SELECTOR, f'#servers tr[data-server-id="{server_id}"] button[data-verb="{verb}"]'
    )


def go(browser: webdriver.Chrome, view: str) -> None:
    """Open a view from the navigation, as a person would."""
    browser.find_element(By.CSS_SELECTOR, f'#views a[data-view="{view}"]').click()
    wait_until(lambda: browser.find_element(By.ID, f"view-{view}").is_displayed(), 5, f"the {view} view")


def list_rows(browser: webdriver.Chrome, table: str) -> list[tuple[str, str, str]]:
    script = f"""return [...document.querySelectorAll('#{table} tbody tr')]
        .map(r => [r.dataset.client, r.dataset.request, r.dataset.status]);"""
    return [tuple(row) for row in browser.execute_script(script)]


def fits_the_width(browser: webdriver.Chrome) -> bool:
    return browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth;")


@pytest.mark.timeout(120)
def test_console_at_a_desk(watchful_balancer: LiveBalancer, procs: ProcessGroup, chromium: OpenBrowser):
    """At 1280x800: servers with pid and host, actions only where they apply (none for a dead node), the death
    in its own panel with an icon, a history chart older than the page, requests filtered by status and one
    request's detail, the failed request under Failures; all without a reload."""
    balancer = watchful_balancer
    gateway = start_gateway(procs)
    balancer.start_server(9, handler="boom")  # the only node at first: request 1 fails there
    balancer.wait_servers_active({9})
    send(gateway, 1)
    wait_until(lambda: gateway.get("/requests?status=failed"), 10, "request 1 failed")
    balancer.call("drain", server_id=9)
    assert (
        gateway.call("POST", "/configure", {"num_servers": 2, "num_clients": 0, "requests_per_client": 0}).status == 200
    )
    for request_id in (2, 3, 4):
        send(gateway, request_id, payload={"n": request_id})
    wait_until(lambda: processed(gateway) == {2, 3, 4}, 15, "requests 2-4 processed")
    os.kill(balancer.servers()[1]["pid"], signal.SIGKILL)
    balancer.wait_dead(1)
    wait_until(lambda: len(gateway.get("/api/history")["points"]) >= 2, 10, "two history points")

    loaded_at = time.time()
    browser = chromium(*DESK)
    browser.get(gateway.url + "/")
    browser.execute_script("window.zlbNoReload = 'the same page';")
    shown = wait_until(lambda: len(server_cells(browser)) == 3 and server_cells(browser), 20, "three servers")
    wait_until(lambda: server_cells(browser)["1"]["state"] == "dead", 10, "server 1 shown dead")
    for server_id, server in balancer.servers().items():
        assert (shown[str(server_id)]["pid"], shown[str(server_id)]["host"]) == (str(server["pid"]), server["host"])
    assert not action(browser, 1, "up").is_displayed(), "a dead node's Up is not offered"
    assert "zlb server --id 1" in browser.find_element(By.CSS_SELECTOR, '#servers tr[data-server-id="1"]').text
    assert action(browser, 9, "up").is_enabled() and not action(browser, 9, "drain").is_enabled()
    assert action(browser, 0, "down").is_enabled() and not action(browser, 0, "up").is_enabled()
    node_log = browser.find_element(By.ID, "node-log")
    wait_until(lambda: "Server 1 is dead" in node_log.text, 10, "the death among node events")
    logs = browser.find_element(By.ID, "log").text + node_log.text
    assert not any(mark in logs for mark in EMOJI), "markers are drawn as icons"
    assert browser.find_elements(By.CSS_SELECTOR, "#node-log svg.icon.warn"), "the death has its warning icon"

    go(browser, "history")
    chart = browser.find_element(By.CSS_SELECTOR, "#chart-queue svg")
    wait_until(lambda: chart.get_attribute("data-first-ts"), 10, "the chart drawn")
    assert float(chart.get_attribute("data-first-ts")) < loaded_at, "points from before the page was loaded"
    assert int(chart.get_attribute("data-points")) >= 2
    assert browser.find_element(By.CSS_SELECTOR, "#chart-queue polyline").get_attribute("points")

    go(browser, "requests")
    Select(browser.find_element(By.NAME, "status")).select_by_value("processed")
    browser.find_element(By.CSS_SELECTOR, "#request-filters button").click()
    wanted = [("0", str(i), "processed") for i in (2, 3, 4)]
    wait_until(lambda: list_rows(browser, "requests") == wanted, 10, "only the processed requests")
    browser.find_element(By.CSS_SELECTOR, '#requests tr[data-request="3"]').click()
    detail = browser.find_element(By.ID, "request-detail")
    wait_until(lambda: "Result (" in detail.text, 10, "request 3's detail")
    assert '"echo": {"n": 3}' in detail.text
    attempt = browser.find_element(By.CSS_SELECTOR, "#request-detail table.attempts tbody tr").text
    assert "processed" in attempt
    assert "Request 3 from Client 0 processed by Server" in detail.text

    go(browser, "failures")
    wait_until(lambda: list_rows(browser, "failures") == [("0", "1", "failed")], 10, "the failed request")
    assert browser.execute_script("return window.zlbNoReload;") == "the same page"
    assert fits_the_width(browser)


@pytest.mark.timeout(90)
def test_console_on_a_phone(balancer: LiveBalancer, procs: ProcessGroup, chromium: OpenBrowser):
    """At 390x844 every view, and a request's detail, fit the width with each action button on screen; no
    token box where the gateway needs no token."""
    gateway = start_gateway(procs)
    assert (
        gateway.call("POST", "/configure", {"num_servers": 2, "num_clients": 0, "requests_per_client": 0}).status == 200
    )
    send(gateway, 7, payload={"text": "a long payload " * 40})
    wait_until(lambda: processed(gateway) == {7}, 10, "request 7 processed")
    browser = chromium(*PHONE)
    browser.get(gateway.url + "/")
    wait_until(lambda: len(server_cells(browser)) == 2, 20, "two servers")
    assert browser.execute_script("return window.innerWidth;") == PHONE[0]
    assert not browser.find_element(By.ID, "auth-box").is_displayed()
    for view in ("servers", "requests", "failures", "history", "send"):
        go(browser, view)
        assert fits_the_width(browser), view
    go(browser, "servers")
    buttons = browser.find_elements(By.CSS_SELECTOR, "#servers button")
    assert len(buttons) == 6
    edges = [browser.execute_script("return arguments[0].getBoundingClientRect().right;", b) for b in buttons]
    assert max(edges) <= PHONE[0], "every action button is on screen (Drain was cut off)"
    go(browser, "requests")
    wait_until(lambda: list_rows(browser, "requests") == [("0", "7", "processed")], 10, "request 7 listed")
    browser.find_element(By.CSS_SELECTOR, '#requests tr[data-request="7"]').click()
    wait_until(lambda: "Result (" in browser.find_element(By.ID, "request-detail").text, 10, "the detail")
    assert fits_the_width(browser)


@pytest.mark.timeout(60)
def test_console_api_pages_on_the_balancer_and_serves_history_as_json_and_csv(
    balancer: LiveBalancer, procs: ProcessGroup
):
    """/api/requests?status= answers one page at most, with the key to the next; /api/history and its CSV hold
    the same points; an unknown request is a 404; /api/console says no token is needed here."""
    gateway = start_gateway(procs)
    balancer.start_server(0, "--capacity", "4")
    balancer.wait_servers_active({0})
    for request_id in range(1, 8):
        send(gateway, request_id)
    wait_until(lambda: len(processed(gateway)) == 7, 10, "seven processed")
    seen, after = [], ""
    while after is not None:
        page = gateway.get(f"/api/requests?status=processed&limit=3&after={after}")
        assert len(page["requests"]) <= 3 and {r["status"] for r in page["requests"]} <= {"processed"}
        seen += [r["request_id"] for r in page["requests"]]
        after = page["next"]
    assert seen == list(range(1, 8))
    assert gateway.call("GET", "/api/requests?limit=10000").status == 400, "a page is at most 200 rows"
    assert gateway.get("/api/requests?id=5")["requests"][0]["request_id"] == 5
    assert gateway.call("GET", "/api/request?client=0&id=999").status == 404

    history = wait_until(lambda: len(gateway.get("/api/history")["points"]) >= 2 and gateway.get("/api/history"), 10,
                         "two history points")  # fmt: skip
    assert history["window_s"] == 900 and set(history["points"][0]) == set(COLUMNS)
    csv_text = gateway.call("GET", "/api/history.csv").body.decode()
    lines = csv_text.splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) >= 3
    info = gateway.get("/api/console")
    assert info["token_required"] is False and info["actions"] == {"retry": False, "drop": False}

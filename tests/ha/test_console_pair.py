"""The web console in front of an HA pair: the leader, its standby in sync and when it took over; after a
kill -9 of the leader, the new one, alone until the killed member is back."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from tests.browser import DESK, OpenBrowser
from tests.ha.cluster import HaGroup
from tests.harness import wait_until
from tests.test_http_gateway import start_gateway


@pytest.mark.timeout(120)
def test_the_console_shows_the_pair_and_the_takeover(ha_group: HaGroup, chromium: OpenBrowser):
    gateway = start_gateway(ha_group.procs, "--control", ha_group.list_of("control"), "--events",
                            ha_group.list_of("events"))  # fmt: skip
    browser = chromium(*DESK)
    browser.get(gateway.url + "/")
    leader = ha_group.leader()
    epoch = leader.status()["epoch"]

    def card() -> str:
        box = browser.find_element(By.ID, "ha-card")
        return box.text if box.is_displayed() else ""

    wait_until(lambda: f"epoch {epoch}" in card() and "in sync" in card(), 20, "the HA card with the pair")
    assert leader.replication in card() and "leading since" in card()
    other = next(m for m in ha_group.members if m is not leader)
    ha_group.kill9(leader)
    ha_group.wait_leader(other, timeout=15)
    new_epoch = other.status()["epoch"]
    wait_until(lambda: f"leader ALONE, epoch {new_epoch}" in card(), 30, "the card to show the new leader, alone")
    assert other.replication in card()
    alerts = browser.find_element(By.ID, "alerts")
    assert "is alone" in alerts.text

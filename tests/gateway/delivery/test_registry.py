"""Connector kinds come from the `imagegate.connectors` entry points; a broken plugin is logged and skipped."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest
import structlog.testing

from gateway.delivery import registry


def _points(*pairs: tuple[str, str]) -> list[EntryPoint]:
    return [EntryPoint(name=name, value=value, group=registry.GROUP) for name, value in pairs]


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    registry.kinds.cache_clear()
    yield
    registry.kinds.cache_clear()


def test_every_shipped_connector_loads() -> None:
    assert set(registry.kinds()) == {
        "webhook",
        "folder",
        "s3",
        "webdav",
        "email",
        "dingtalk",
        "feishu",
        "wecom",
        "salesforce",
        "hubspot",
        "odoo",
    }


def test_a_plugin_that_fails_to_load_is_skipped_and_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    points = _points(
        ("webhook", "connectors.webhook:StandardWebhook"),
        ("broken", "acme_missing_package.connector:Broken"),  # not installed
        ("wrong", "connectors.base:DeliveryError"),  # not a Connector
        ("abstract", "connectors.base:CRMConnector"),  # no kind, abstract
        ("misnamed", "connectors.folder:FolderConnector"),  # its kind is `folder`
    )
    monkeypatch.setattr(registry, "entry_points", lambda group: points)

    with structlog.testing.capture_logs() as logs:
        found = registry.kinds()

    assert set(found) == {"webhook"}
    events = [(e["event"], e["kind"]) for e in logs]
    assert events == [
        ("connector.not_a_connector", "abstract"),
        ("connector.load_failed", "broken"),
        ("connector.not_a_connector", "misnamed"),
        ("connector.not_a_connector", "wrong"),
    ]

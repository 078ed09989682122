"""The connector contract: plugins with or without the Config type parameter, and the shared field types."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.base import (
    BaseUrl,
    CRMConnector,
    Delivered,
    Delivery,
    EndpointUrl,
    PermanentError,
    TitleTemplate,
    read_checked,
    valid_target,
)
from gateway.delivery import registry
from tests.connectors.support import asset, delivery, outbound


class AcmeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: BaseUrl = Field(max_length=100)
    hook_url: EndpointUrl | None = None
    title_template: TitleTemplate = None


class AcmeTarget(BaseModel):
    record: str = Field(pattern=r"^R-\d+$")


class UntypedConnector(CRMConnector):  # a plugin written without the type parameter
    kind: ClassVar[str] = "acme"
    Config: ClassVar[type[BaseModel]] = AcmeConfig
    Target: ClassVar[type[BaseModel]] = AcmeTarget

    async def test_connection(self) -> str:
        return f"reached {self.config.base_url}"

    async def deliver(self, delivery: Delivery) -> Delivered:
        target = valid_target(AcmeTarget, delivery)
        return Delivered(external_id=f"{self.config.base_url}/{target.record}")


class TypedConnector(CRMConnector[AcmeConfig]):
    kind: ClassVar[str] = "acme-typed"
    Config: ClassVar[type[BaseModel]] = AcmeConfig

    async def test_connection(self) -> str:
        return f"reached {self.config.base_url}"

    async def deliver(self, delivery: Delivery) -> Delivered:
        return Delivered()


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    registry.kinds.cache_clear()
    yield
    registry.kinds.cache_clear()


def test_plugins_with_and_without_the_type_parameter_are_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [
        EntryPoint(name="acme", value=f"{__name__}:UntypedConnector", group=registry.GROUP),
        EntryPoint(name="acme-typed", value=f"{__name__}:TypedConnector", group=registry.GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: points)
    assert registry.kinds() == {"acme": UntypedConnector, "acme-typed": TypedConnector}
    assert UntypedConnector.capability == TypedConnector.capability == "crm"


async def test_an_untyped_plugin_gets_its_config_and_target() -> None:
    async with outbound() as http:
        connector = UntypedConnector(AcmeConfig(base_url="https://acme.example/api/"), http=http)
        assert await connector.test_connection() == "reached https://acme.example/api"
        delivered = await connector.deliver(delivery(target={"record": "R-7"}))
        assert delivered.external_id == "https://acme.example/api/R-7"
        with pytest.raises(PermanentError, match=r"^invalid target: record: String should match pattern"):
            await connector.deliver(delivery(target={"record": "x"}))


def test_a_base_url_loses_its_trailing_slash_and_an_endpoint_url_keeps_it() -> None:
    config = AcmeConfig(base_url="http://acme.example//", hook_url="https://acme.example/hook/")
    assert (config.base_url, config.hook_url) == ("http://acme.example", "https://acme.example/hook/")
    for field in ("base_url", "hook_url"):
        with pytest.raises(ValidationError, match="Value error, an http\\(s\\) URL"):
            AcmeConfig.model_validate({"base_url": "https://acme.example", field: "ftp://acme.example"})


def test_the_field_constraints_apply_before_the_shared_validators() -> None:
    with pytest.raises(ValidationError) as caught:
        AcmeConfig(base_url="ftp://" + "x" * 100)
    assert [e["type"] for e in caught.value.errors()] == ["string_too_long"]
    schema = AcmeConfig.model_json_schema()["properties"]
    assert schema["base_url"] == {"maxLength": 100, "title": "Base Url", "type": "string"}


def test_a_title_template_takes_the_title_placeholders_only() -> None:
    assert AcmeConfig(base_url="https://a.example", title_template="{record_id} {role}").title_template
    for template in ("{nope}", "{record_id!r}", "{record_id:>3}", "{"):
        with pytest.raises(ValidationError):
            AcmeConfig(base_url="https://a.example", title_template=template)


async def test_read_checked_refuses_bytes_that_do_not_match_their_sha256() -> None:
    good = asset()
    assert await read_checked(good) == await good.read()
    forged = asset(name="other")
    object.__setattr__(forged, "sha256", "0" * 64)
    with pytest.raises(PermanentError, match="do not match their recorded sha256"):
        await read_checked(forged)

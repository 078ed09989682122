"""Settings: defaults follow IMAGEGATE_VAR_DIR, URLs get their async driver, production needs a real secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import Settings


def test_defaults_are_the_embedded_default_under_var() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "sqlite+aiosqlite:///./var/imagegate.db"
    assert settings.asset_dir == Path("var/assets")
    assert settings.redis_url is None and not settings.distributed


def test_var_dir_moves_the_database_and_the_assets(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, var_dir=tmp_path / "state")  # type: ignore[call-arg]
    assert settings.sqlite_path == tmp_path / "state" / "imagegate.db"
    assert settings.asset_dir == tmp_path / "state" / "assets"


def test_explicit_values_win_over_var_dir(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, var_dir=tmp_path, database_url="postgresql://u@h/db", asset_dir=tmp_path / "a"
    )
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert settings.sqlite_path is None
    assert settings.asset_dir == tmp_path / "a"


def test_empty_redis_url_means_embedded() -> None:
    assert Settings(_env_file=None, redis_url="").redis_url is None  # type: ignore[call-arg]


def test_production_refuses_the_placeholder_secret() -> None:
    with pytest.raises(ValidationError, match="IMAGEGATE_SECRET_KEY"):
        Settings(_env_file=None, env="production")  # type: ignore[call-arg]
    assert Settings(_env_file=None, env="production", secret_key="s" * 32).env == "production"  # type: ignore[call-arg]

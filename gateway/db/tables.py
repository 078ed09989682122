"""Import every table module so that ``SQLModel.metadata`` knows the whole schema (Alembic, tests)."""

from gateway.assets.models import Asset
from gateway.backends.models import Backend, BackendSpeed
from gateway.jobs.models import Job
from gateway.systems.models import System, Token

__all__ = ["Asset", "Backend", "BackendSpeed", "Job", "System", "Token"]

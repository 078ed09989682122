"""Import every table module so that ``SQLModel.metadata`` knows the whole schema (Alembic, tests)."""

from gateway.assets.models import Asset
from gateway.audit.models import AuditEvent
from gateway.backends.models import Backend, BackendSpeed
from gateway.delivery.models import ConnectorInstance, DeliveryAttempt, DeliveryRow
from gateway.jobs.models import Job
from gateway.moderation.models import ContentPolicy
from gateway.quotas.models import JobCharge, Quota, UsageDay
from gateway.recipes.models import Batch
from gateway.systems.models import OAuthClient, System, Token
from gateway.templates.models import TemplateVersion

__all__ = [
    "Asset",
    "AuditEvent",
    "Backend",
    "BackendSpeed",
    "Batch",
    "ConnectorInstance",
    "ContentPolicy",
    "DeliveryAttempt",
    "DeliveryRow",
    "Job",
    "JobCharge",
    "OAuthClient",
    "Quota",
    "System",
    "TemplateVersion",
    "Token",
    "UsageDay",
]

"""The admin API (``/tripwire/v1``): tasks, kills, resumes, deadlines and the audit trail."""

from proxy.admin.app import build_admin_app

__all__ = ["build_admin_app"]

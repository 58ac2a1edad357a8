"""KubeFunction: a self-hosted Function-as-a-Service platform for Python."""

from .celery import app as celery_app

__all__ = ["celery_app"]

"""Shared fixtures. Integration fixtures (the real Celery worker) live here too."""

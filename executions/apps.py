from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        # Celery's autodiscovery finds only `tasks.py`: register the callback and retention
        # tasks too.
        from . import callback_tasks, retention_tasks  # noqa: F401

from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        # Celery's autodiscovery finds only `tasks.py`: register the callback task too.
        from . import callback_tasks  # noqa: F401

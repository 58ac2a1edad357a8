from django.apps import AppConfig


class TriggersConfig(AppConfig):
    name = "triggers"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the post_delete handler)

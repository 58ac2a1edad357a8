from django.apps import AppConfig


class TriggersConfig(AppConfig):
    name = "triggers"

    def ready(self) -> None:
        # Here, not at the top: Django imports an app's config before any models are loaded,
        # and the handlers (post_delete of a trigger) import them.
        from . import signals  # noqa: F401  (connects the handlers)

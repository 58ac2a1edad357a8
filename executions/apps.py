from django.apps import AppConfig

from functions import executor

from .runtimes import get_runtime


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        """Connect what functions/ asks of this app (`functions.executor`): functions/ sits below
        executions/ and never imports it."""
        # Here, not at the top: Django imports an app's config before any models are loaded,
        # and the selectors query them.
        from . import selectors

        executor.connect(executor.Executor(runtime=get_runtime,
                                           waiting_counts=selectors.waiting_counts,
                                           running_count=selectors.running_count))

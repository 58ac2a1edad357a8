from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        # Here, not at the top: Django imports an app's config before any app's models are
        # loaded, and the selectors and runtimes import models. (functions/ sits below
        # executions/ and reaches it only through `functions.executor`, connected here.)
        from functions import executor

        from . import selectors
        from .runtimes import get_runtime

        executor.connect(executor.Executor(runtime=get_runtime,
                                           waiting_counts=selectors.waiting_counts,
                                           running_count=selectors.running_count))

"""ASGI entry point: the web server (`Procfile`, `Dockerfile`, `k8s/`) runs it under gunicorn with
uvicorn workers (docs/architecture.md, "Processes").

The requests that wait (`POST /t/<name>`, `?wait=`) are async views: each process's event loop
holds any number of them at no thread each. Sync code — the admin's and the API's views, the ORM
calls of the async views, the hooks of Django's middleware — runs on a fixed set of threads per
process (KUBEFUNCTION_WEB_THREADS), and a request does all its sync work on the least busy of
them when it arrives. Django alone would give each request a thread of its own for its whole
life: a webhook waiting 30 s would keep a thread, and the database connection opened in it, the
whole time (a thousand waiting webhooks, a thousand Postgres connections against a default
`max_connections` of 100), and no connection would outlive its request. Here each thread keeps
its connection from one request to the next as a WSGI thread does (CONN_MAX_AGE), Django's
request signals close it when it is too old or broken, and a process never holds more database
connections than it has threads.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kubefunction.settings")


class SyncThread(ThreadPoolExecutor):
    """One thread (so one database connection) that runs the sync calls of the requests given
    to it, one at a time; `pending` counts the calls submitted and not yet done."""

    def __init__(self, index: int) -> None:
        super().__init__(max_workers=1, thread_name_prefix=f"web-sync-{index}")
        self.pending = 0
        self._count = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self._count:
            self.pending += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future) -> None:
        with self._count:
            self.pending -= 1


class SyncThreads:
    """ASGI middleware: every HTTP request runs its thread-sensitive sync calls (asgiref's
    default, and Django's for views and middleware) on the least busy of `size` threads."""

    def __init__(self, app, size: int) -> None:
        self.app = app
        self.threads = [SyncThread(index) for index in range(size)]

    def least_busy(self) -> SyncThread:
        """The first thread with the fewest calls to run: at rest, the first. Packing requests
        on few threads beat spreading them over all (by how many requests each holds): 81–89
        against 62–66 webhook calls/s from 16 clients on 2 cores (fewer threads taking turns
        at the GIL, fewer connections kept warm)."""
        return min(self.threads, key=lambda thread: thread.pending)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop: Django does not speak it
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        async with ThreadSensitiveContext(executor=self.least_busy()):
            await self.app(scope, receive, send)


application = SyncThreads(get_asgi_application(), settings.KUBEFUNCTION_WEB_THREADS)

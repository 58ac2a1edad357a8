"""The Celery result of an execution, written by us in the same statement as its outcome.

The run task ignores its own result: the outcome and the django-celery-results row are committed
together (see `executions.transitions`), so `AsyncResult(task_id)` and the execution never
disagree, and a crash between two writes cannot leave one without the other. The row has the
format the django-db backend writes, so any Celery client reads it with `AsyncResult.get()`.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.exceptions import TaskRevokedError
from django.utils import timezone
from django_celery_results.models import TaskResult

from kubefunction.celery import app

from .workers import RUN_TASK


class FunctionFailed(Exception):
    """The function ended in error or timed out; the message carries its error and traceback."""


def result_row(*, task_id: str, succeeded: bool, output: Any = None, error_type: str = "",
               error: str = "", worker: str = "", revoked: bool = False) -> TaskResult:
    """An unsaved result row: SUCCESS with the output, FAILURE with `FunctionFailed`, or (for a
    cancelled execution, `revoked`) REVOKED with Celery's own `TaskRevokedError`, which
    `AsyncResult.get()` raises."""
    backend = app.backend
    if revoked:
        state, traceback = states.REVOKED, None
        value = backend.prepare_exception(TaskRevokedError(error or "cancelled"))
    elif succeeded:
        state, value, traceback = states.SUCCESS, output, None
    else:
        failure = FunctionFailed(f"{error_type}: {error}".strip(": \n"))
        state, value, traceback = states.FAILURE, backend.prepare_exception(failure), error
    content_type, content_encoding, data = backend.encode_content(value)
    _, _, meta = backend.encode_content({"children": []})
    return TaskResult(task_id=task_id, status=state, result=data, traceback=traceback, meta=meta,
                      content_type=content_type, content_encoding=content_encoding,
                      task_name=RUN_TASK, worker=worker or None, date_done=timezone.now())

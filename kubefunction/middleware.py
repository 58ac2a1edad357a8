"""Guards at the edge of every request: malformed framing refused before anything reads it, body
sizes checked before a body is read, the webhook origin kept to webhooks, and a database outage
answered with 503 instead of a 500 traceback; and the static files.

Every middleware here runs sync and async alike (kubefunction/asgi.py): one that is sync only
would make Django run the rest of the chain, the async views' waits included, inside a sync
thread, one request after another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from whitenoise.middleware import WhiteNoiseMiddleware

from functions.artifacts import AdminSourceSizeLimitHandler
from triggers.webhooks import on_webhook_origin

from .api_errors import DATABASE_ERRORS, database_unavailable_response
from .api_input import CONTENT_LENGTH_FORMAT, declared_length

# Paths whose request bodies are bounded here: the API and the HTTP triggers.
BOUNDED_PATH_PREFIXES = ("/api/", "/t/")
# The admin's function forms take source uploads: bounded while they stream, like the API's.
ADMIN_UPLOAD_PREFIX = "/admin/functions/"
BODY_METHODS = ("POST", "PUT", "PATCH")


def bad_request(detail: str, *, header: str) -> JsonResponse:
    """A 400 naming the header at fault, with its own length: it is answered before the
    middleware that would add one, and the client must know where it ends."""
    response = JsonResponse({header: [detail], "detail": detail, "code": "bad_request"},
                            status=400)
    response["Content-Length"] = str(len(response.content))
    return response


class BothModes:
    """A middleware that runs in the mode of the handler it wraps: `_call` under WSGI, the
    coroutine `_acall` under ASGI (Django then neither adapts it nor the chain below it)."""

    sync_capable = True
    async_capable = True

    def take_mode(self, get_response: Callable) -> None:
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        return self._acall(request) if self.async_mode else self._call(request)


class EdgeMiddleware(BothModes):
    """A middleware that may answer a request from what it already holds (`early_answer`, no
    I/O): run in place on either path, so under ASGI it takes no thread."""

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.take_mode(get_response)

    def _call(self, request: HttpRequest) -> HttpResponse:
        answer = self.early_answer(request)
        return answer if answer is not None else self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        answer = self.early_answer(request)
        return answer if answer is not None else await self.get_response(request)

    def early_answer(self, request: HttpRequest) -> HttpResponse | None:
        return None


class RequestFramingMiddleware(EdgeMiddleware):
    """400 (JSON, on every path) for a request whose framing cannot be trusted: a Content-Length
    that is not a whole number of bytes (`abc`, `-1`, `1e3`, two values), or one that comes with
    `Transfer-Encoding` (the two disagree on where the body ends: request smuggling).

    Django's WSGI handler reads an unreadable length as 0 and code that calls int() on it
    crashes; refused here, first in the chain, nothing downstream meets it.
    """

    def early_answer(self, request: HttpRequest) -> HttpResponse | None:
        value = request.META.get("CONTENT_LENGTH")
        if value not in (None, "") and not CONTENT_LENGTH_FORMAT.fullmatch(value):
            return bad_request(
                f"Content-Length must be a whole number of bytes; got {value[:40]!r}.",
                header="Content-Length")
        if value not in (None, "") and request.META.get("HTTP_TRANSFER_ENCODING"):
            return bad_request("send either Content-Length or Transfer-Encoding, not both.",
                               header="Transfer-Encoding")
        return None


class WebhookOriginMiddleware(EdgeMiddleware):
    """On the separate webhook origin (KUBEFUNCTION_WEBHOOK_ORIGIN) only `/t/` exists: functions'
    pages served there must find no admin, API or login form on their own origin."""

    def early_answer(self, request: HttpRequest) -> HttpResponse | None:
        if on_webhook_origin(request) and not request.path.startswith("/t/"):
            return JsonResponse({"detail": "Only HTTP triggers (/t/<name>) are served on this "
                                           "host.", "code": "not_found"}, status=404)
        return None


def is_chunked(request: HttpRequest) -> bool:
    return "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()


class RequestBodyLimitMiddleware(EdgeMiddleware):
    """Refuse, from the headers alone, a body that is too large (413) or has no length (411).

    Django's WSGI handler reads no more than Content-Length, so a chunked body without one would
    silently arrive empty; it is refused instead. The upload endpoints apply their own, smaller,
    limit (`functions.api.SourceMultiPartParser`).
    """

    def early_answer(self, request: HttpRequest) -> HttpResponse | None:
        if request.method in BODY_METHODS and request.path.startswith(BOUNDED_PATH_PREFIXES):
            refusal = self.refusal(request)
            if refusal is not None:  # the client may still be sending: say where the answer ends
                refusal["Content-Length"] = str(len(refusal.content))
                return refusal
        if request.method == "POST" and request.path.startswith(ADMIN_UPLOAD_PREFIX):
            # Before the CSRF check reads the form: an oversized source stops the parse (400).
            request.upload_handlers.insert(0, AdminSourceSizeLimitHandler(
                request, limit=settings.KUBEFUNCTION_MAX_SOURCE_BYTES))
        return None

    @staticmethod
    def refusal(request: HttpRequest) -> HttpResponse | None:
        length = declared_length(request)
        if length is None and is_chunked(request):
            return JsonResponse(
                {"detail": "Send the body with a Content-Length header (chunked request bodies "
                           "are not accepted).", "code": "length_required"}, status=411)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if length is not None and limit is not None and length > limit:
            return JsonResponse(
                {"detail": f"The request body is {length} bytes; the limit is {limit} bytes.",
                 "code": "request_too_large"}, status=413)
        return None


class DatabaseUnavailableMiddleware(EdgeMiddleware):
    """A view that cannot reach the database answers 503 with `Retry-After` (JSON on the API
    and webhook paths, a plain page for the admin). DRF views get the same from
    `kubefunction.api_errors.exception_handler`; errors outside views from `server_error`."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DATABASE_ERRORS):
            return database_unavailable_response(request, exception)
        return None


class StaticFilesMiddleware(BothModes, WhiteNoiseMiddleware):
    """WhiteNoise's middleware (the admin's and the API docs' static files from STATIC_ROOT),
    async-capable: WhiteNoise's own is sync only. Under ASGI a file is looked up in place and
    streamed in blocks read off the event loop."""

    def __init__(self, get_response: Callable, **kwargs) -> None:
        super().__init__(get_response, **kwargs)
        self.take_mode(get_response)

    def _call(self, request: HttpRequest) -> HttpResponse:
        return WhiteNoiseMiddleware.__call__(self, request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if self.autorefresh:  # DEBUG: looks on disk
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(
                request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        response = await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
        if response.streaming:  # a file, or nothing (HEAD, 304)
            response.streaming_content = _blocks(response.file_to_stream)
        return response


async def _blocks(file, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    if file is None:
        return
    read = sync_to_async(file.read, thread_sensitive=False)
    while block := await read(size):
        yield block

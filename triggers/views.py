"""`/t/<name>[/<path>]`: the HTTP trigger endpoint (a plain Django view, outside the API's session
authentication and CSRF checks: the trigger's own token authenticates the call). An async view:
a synchronous call waits for its function without holding a thread (kubefunction/asgi.py)."""

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from . import webhooks


@csrf_exempt
@transaction.non_atomic_requests  # the task is sent on commit, before the synchronous wait
async def webhook(request: HttpRequest, name: str, subpath: str = "") -> HttpResponse:
    """Run the trigger's function with the request as its event (see triggers.webhooks)."""
    answer = await webhooks.webhook_call(name=name, request=request, subpath=subpath)
    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for header, value in answer.headers.items():
        if isinstance(value, list) and header.lower() == "set-cookie":
            for cookie in value:  # each on its own line, as the function gave them
                response.cookies.load(cookie)
        elif isinstance(value, list):
            response[header] = ", ".join(value)
        else:
            response[header] = value
    # A function's failure (502) or slowness (504) is not a server error: triggers.webhooks
    # logs each call itself, so Django's "Bad Gateway" ERROR line is skipped.
    response._has_been_logged = True
    return response

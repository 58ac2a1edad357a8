"""Upload limits, over real HTTP to a live server: an oversized body is refused from its headers
or as it streams in (413 naming the field), never read whole; a body without a length is 411."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest
import requests
from rest_framework.authtoken.models import Token

from functions.models import Function

pytestmark = pytest.mark.django_db(transaction=True)

HANDLER = b"def handle(event, context):\n    return event\n"
BOUNDARY = "kubefunction-test-boundary"


@pytest.fixture
def token(user) -> str:
    return Token.objects.create(user=user).key


def raw_request(live_server, head: str, body_part: bytes, *,
                timeout: float = 20) -> tuple[int, str]:
    """Send the head and only the start of the body, then read the answer while still holding
    the rest: a server that waited for the whole declared body would time out here."""
    address = urlsplit(live_server.url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body_part)
        answer = b""
        while not _complete(answer) and (chunk := sock.recv(65536)):
            answer += chunk
    head_text, _, body = answer.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), body.decode()


def _complete(answer: bytes) -> bool:
    """The head and as many body bytes as its Content-Length have arrived."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            return len(body) >= int(value)
    raise AssertionError(f"an answer without Content-Length: {head!r}")


def multipart_head(path: str, token: str, length: int) -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n")


def file_part(name: str, filename: str, size: int) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + b"#" * size


@pytest.mark.parametrize("path", ["/api/functions/", "/api/functions/echo/versions/"])
def test_declared_oversized_upload_is_refused_before_the_body_is_sent(
        live_server, token, user, settings, path):
    Function.objects.create(name="echo", owner=user, handler="hello.handle")
    declared = settings.KUBEFUNCTION_MAX_SOURCE_BYTES + 2 * 1024 * 1024  # under the 32 MiB cap
    status, body = raw_request(live_server, multipart_head(path, token, declared),
                               file_part("source", "big.py", 64 * 1024))
    assert status == 413, body
    assert "source" in body and "bytes" in body


def test_huge_body_anywhere_in_the_api_is_refused_from_its_headers(live_server, token, settings):
    declared = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1
    head = (f"POST /api/triggers/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n"
            "Connection: close\r\n\r\n")
    status, body = raw_request(live_server, head, b'{"name": "')
    assert status == 413, body
    assert "request_too_large" in body


def test_upload_over_the_limit_is_stopped_while_it_streams(live_server, token, settings):
    """Content-Length is within the form allowance, but the file itself is over the limit: the
    upload handler stops it as the bytes arrive."""
    settings.KUBEFUNCTION_MAX_SOURCE_BYTES = 100_000
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbig\r\n"
            ).encode() + file_part("source", "big.py", 600_000) + f"\r\n--{BOUNDARY}--\r\n".encode()
    response = requests.post(
        f"{live_server.url}/api/functions/", data=body, timeout=30,
        headers={"Authorization": f"Token {token}",
                 "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert response.status_code == 413, response.text
    assert "the limit is 100000 bytes" in response.json()["source"][0]
    assert not Function.objects.filter(name="big").exists()


def test_chunked_upload_without_length_is_refused(live_server, token):
    def chunks():
        yield file_part("source", "big.py", 10_000)
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    response = requests.post(
        f"{live_server.url}/api/functions/", data=chunks(), timeout=30,
        headers={"Authorization": f"Token {token}",
                 "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert response.status_code == 411, response.text
    assert response.json()["code"] == "length_required"


def test_upload_within_the_limits_is_accepted(live_server, token):
    response = requests.post(
        f"{live_server.url}/api/functions/", timeout=30, data={"name": "fits"},
        files={"source": ("hello.py", HANDLER)}, headers={"Authorization": f"Token {token}"})
    assert response.status_code == 201, response.text
    assert Function.objects.filter(name="fits").exists()


def test_too_many_form_fields_is_a_json_400(api, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    body = "&".join(f"f{i}=1" for i in range(50))
    response = api.post("/api/triggers/", body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"

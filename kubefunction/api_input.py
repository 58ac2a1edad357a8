"""Strict API input: a request body naming a field the endpoint does not take is a 400.

DRF drops unknown keys silently, so `{"text": "hi"}` sent to dispatch would run the function with
the trigger's default payload and the caller's data would be lost without a word. Every input
serializer of the API derives from `StrictInput` (one place, so fields later issues add are
covered too); the OpenAPI schema says the same (`additionalProperties: false` on request bodies,
`forbid_additional_request_properties`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from django.conf import settings
from django.http import HttpRequest
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination

from .errors import InvalidInput

# Keys the framework itself puts in a body: the browsable API's CSRF token and its content
# override form (`_content`, `_content_type`, `_method`).
FRAMEWORK_FIELDS = frozenset({"csrfmiddlewaretoken", "_content", "_content_type", "_method"})


def unknown_fields(data: Mapping, *, accepted: Iterable[str]) -> list[str]:
    """The keys of `data` that are neither `accepted` nor the framework's own, sorted."""
    return sorted(set(data) - set(accepted) - FRAMEWORK_FIELDS)


def refuse_unknown(data, *, accepted: Iterable[str] = (), read_only: Iterable[str] = (),
                   hint: str = "", what: str = "field") -> None:
    """Raise a 400 ValidationError naming each key of `data` the endpoint does not take
    (`what`: "field" of a body, "query parameter")."""
    if not isinstance(data, Mapping):
        return  # not an object: the serializer itself says so
    accepted, read_only = set(accepted), set(read_only)
    errors = {}
    for key in unknown_fields(data, accepted=accepted):
        errors[key] = [f"'{key}' is read-only." if key in read_only else
                       f"unknown {what} '{key}'{'; ' + hint if hint else ''}. Accepted: "
                       f"{', '.join(sorted(accepted)) or 'none'}."]
    if errors:
        raise serializers.ValidationError(errors)


class StrictInput:
    """Serializer mixin (put it first): unknown and read-only keys in the input are refused,
    each named in the 400 body. `unknown_field_hint` tells where such data belongs."""

    unknown_field_hint: str = ""

    def to_internal_value(self, data):
        fields = self.fields
        refuse_unknown(data, accepted=[name for name, field in fields.items()
                                       if not field.read_only],
                       read_only=[name for name, field in fields.items() if field.read_only],
                       hint=self.unknown_field_hint)
        return super().to_internal_value(data)


def forbid_additional_request_properties(result, generator, request, public):
    """drf-spectacular postprocessing hook: request bodies (components `…Request`, split from the
    answers by COMPONENT_SPLIT_REQUEST) accept only the properties they list."""
    for name, schema in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request") and schema.get("type") == "object":
            schema["additionalProperties"] = False
    return result


class StrictLimitOffsetPagination(LimitOffsetPagination):
    """`?limit=` and `?offset=` as DRF takes them, but a value that is not a whole number in
    range is a 400 naming it: DRF would ignore it, or pass a number beyond the database's bigint
    into the query (a 500)."""

    max_limit = 500
    max_offset = 1_000_000_000

    def _bounded(self, request, name: str, *, low: int, high: int) -> int | None:
        raw = request.query_params.get(name)
        if raw in (None, ""):
            return None
        try:
            value = int(raw)
        except ValueError:
            raise serializers.ValidationError({name: [f"'{raw}' is not a whole number."]}) from None
        if not low <= value <= high:
            raise serializers.ValidationError({name: [f"must be between {low} and {high}."]})
        return value

    def get_limit(self, request):
        limit = self._bounded(request, self.limit_query_param, low=1, high=self.max_limit)
        return self.default_limit if limit is None else limit

    def get_offset(self, request):
        return self._bounded(request, self.offset_query_param, low=0, high=self.max_offset) or 0


# RFC 9110: Content-Length is 1*DIGIT. int() would also take "+5", " 5", "5_0" or "-1".
CONTENT_LENGTH_FORMAT = re.compile(r"[0-9]{1,18}")


def declared_length(request: HttpRequest) -> int | None:
    """The request's Content-Length, or None when it has none (or an unreadable one)."""
    value = request.META.get("CONTENT_LENGTH") or ""
    return int(value) if CONTENT_LENGTH_FORMAT.fullmatch(value) else None


def wait_seconds(request) -> float:
    """The `?wait=` query parameter as seconds, bounded by KUBEFUNCTION_MAX_WAIT."""
    raw = request.query_params.get("wait")
    if raw in (None, ""):
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput("wait must be a number of seconds.", field="wait") from None
    if not 0 <= value <= settings.KUBEFUNCTION_MAX_WAIT:
        raise InvalidInput(f"wait must be between 0 and {settings.KUBEFUNCTION_MAX_WAIT} seconds.",
                           field="wait")
    return value

"""Label and field selectors as the API server parses them (the whole label grammar).

    key=value  key==value  key!=value  key in (a,b)  key notin (a,b)  key  !key
"""

from __future__ import annotations

import re
from collections.abc import Callable

Requirement = Callable[[dict], bool]

_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[A-Za-z0-9_./-]+)")
_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class SelectorError(ValueError):
    """The selector does not parse (the API server answers 400 BadRequest)."""


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise SelectorError(f"unable to parse requirement: {text[pos:]!r}")
        out.append(match.group(1))
        pos = match.end()
    return out


def _key(token: str | None) -> str:
    if token is None or not _KEY.match(token) or len(token.rsplit("/", 1)[-1]) > 63:
        raise SelectorError(f"invalid label key {token!r}")
    return token


def _value(token: str | None) -> str:
    if token is None or not _VALUE.match(token) or len(token) > 63:
        raise SelectorError(f"invalid label value {token!r}")
    return token


def parse_labels(text: str | None) -> list[Requirement]:
    """The requirements of a label selector, all of which must hold."""
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def take() -> str | None:
        nonlocal i
        token = tokens[i] if i < len(tokens) else None
        i += 1
        return token

    while i < len(tokens):
        token = take()
        if token == "!":
            key = _key(take())
            reqs.append(lambda labels, k=key: k not in labels)
        else:
            key = _key(token)
            op = tokens[i] if i < len(tokens) else ","
            if op == ",":
                reqs.append(lambda labels, k=key: k in labels)
            elif op in ("=", "==", "!="):
                i += 1
                value = _value(take() if i < len(tokens) else "")
                if op == "!=":
                    reqs.append(lambda labels, k=key, v=value: labels.get(k) != v)
                else:
                    reqs.append(lambda labels, k=key, v=value: labels.get(k) == v)
            elif op in ("in", "notin"):
                i += 1
                if take() != "(":
                    raise SelectorError(f"expected '(' after {op}")
                values: set[str] = set()
                while True:
                    item = take()
                    if item == ")":
                        break
                    if item == ",":
                        continue
                    values.add(_value(item))
                if not values:
                    raise SelectorError(f"{op} needs at least one value")
                if op == "in":
                    reqs.append(lambda labels, k=key, vs=frozenset(values): labels.get(k) in vs)
                else:
                    reqs.append(
                        lambda labels, k=key, vs=frozenset(values): labels.get(k) not in vs)
            else:
                raise SelectorError(f"unexpected {op!r} after key {key!r}")
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(f"expected ',' but found {tokens[i]!r}")
            i += 1
            if i >= len(tokens):
                raise SelectorError("a selector cannot end with ','")
    return reqs


def _field(obj: dict, path: str) -> str:
    value: object = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


FIELDS = {"metadata.name", "metadata.namespace", "status.phase", "spec.nodeName"}


def parse_fields(text: str | None) -> list[Requirement]:
    """Field selectors: `field=value`, `field==value`, `field!=value`, comma separated."""
    if not text or not text.strip():
        return []
    reqs: list[Requirement] = []
    for part in text.split(","):
        match = re.match(r"^\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not match:
            raise SelectorError(f"invalid field selector {part!r}")
        field, op, value = match.groups()
        if field not in FIELDS:
            raise SelectorError(f'field label not supported: {field}')
        if op == "!=":
            reqs.append(lambda obj, f=field, v=value: _field(obj, f) != v)
        else:
            reqs.append(lambda obj, f=field, v=value: _field(obj, f) == v)
    return reqs


def matches(obj: dict, labels: list[Requirement], fields: list[Requirement]) -> bool:
    obj_labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(req(obj_labels) for req in labels) and all(req(obj) for req in fields)

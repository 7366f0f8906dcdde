"""Query strings read exactly: every route's query is checked against what the route declares
before FastAPI reads it (`strict_query`, an app-level dependency, so routes added later are
covered without a list). An unknown or repeated parameter, a control character, or an integer
or a day not written in plain ASCII digits is a 422 in FastAPI's error shape, never ignored and
never a 5xx.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import unquote_to_bytes

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo
from starlette.types import ASGIApp, Receive, Scope, Send

# U+0000-U+001F and U+007F-U+009F, as in event fields (PostgreSQL refuses NUL in text).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class QuerySyntax:
    """The only text form a parameter type accepts (Python's and Pydantic's parsers take more:
    `int` reads "5_0", "+5", " 5", "5.0"; `date` reads "0" and date-times)."""

    pattern: re.Pattern[str]
    error_type: str
    message: str


INTEGER = QuerySyntax(
    re.compile("[0-9]+"), "int_parsing", "Input should be an integer of ASCII digits 0-9"
)
DAY = QuerySyntax(
    re.compile("[0-9]{4}-[0-9]{2}-[0-9]{2}"), "date_parsing", "Input should be a day, YYYY-MM-DD"
)


@dataclass(frozen=True, slots=True)
class QueryParameter:
    repeatable: bool  # a list-typed parameter may be given more than once
    syntax: QuerySyntax | None


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(repeatable, the scalar type) of a parameter's annotation."""
    repeatable = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            others = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(others) != 1:
                return repeatable, annotation
            annotation = others[0]
        elif origin in (list, tuple, set, frozenset):
            repeatable, annotation = True, get_args(annotation)[0]
        else:
            return repeatable, annotation


def _parameter(info: FieldInfo) -> QueryParameter:
    repeatable, scalar = _unwrap(info.annotation)
    syntax = None
    if scalar is int:  # not bool, a subclass of int with its own words (true, yes, 1...)
        syntax = INTEGER
    elif scalar is date:  # not datetime, a subclass of date
        syntax = DAY
    return QueryParameter(repeatable, syntax)


def _names(name: str, info: FieldInfo) -> list[str]:
    names = [info.alias or name]
    if isinstance(info.validation_alias, str):
        names.append(info.validation_alias)
    elif isinstance(info.validation_alias, AliasChoices):
        names.extend(c for c in info.validation_alias.choices if isinstance(c, str))
    return names


def _query_fields(dependant: Dependant) -> Iterator[tuple[str, FieldInfo]]:
    """Every query parameter of a route and of its dependencies; a Pydantic model declared as
    `Annotated[Model, Query()]` stands for its fields, as FastAPI reads it."""
    pending = [dependant]
    while pending:
        current = pending.pop()
        pending.extend(current.dependencies)
        for field in current.query_params:
            _, scalar = _unwrap(field.field_info.annotation)
            if isinstance(scalar, type) and issubclass(scalar, BaseModel):
                yield from scalar.model_fields.items()
            else:
                yield field.name, field.field_info


def declared_query(route: APIRoute) -> dict[str, QueryParameter]:
    """The query parameters `route` takes, by the name a client writes."""
    declared = {}
    for name, info in _query_fields(route.dependant):
        parameter = _parameter(info)
        for key in _names(name, info):
            declared[key] = parameter
    return declared


def query_errors(
    items: Iterable[tuple[str, str]], declared: dict[str, QueryParameter]
) -> list[dict[str, Any]]:
    """Field errors (FastAPI's shape) for a query string's (key, value) pairs."""
    given: dict[str, list[str]] = {}
    for key, value in items:
        given.setdefault(key, []).append(value)
    errors: list[dict[str, Any]] = []

    def error(kind: str, key: str, msg: str, value: Any) -> None:
        errors.append({"type": kind, "loc": ("query", key), "msg": msg, "input": value})

    for key, values in given.items():
        parameter = declared.get(key)
        if parameter is None:
            known = ", ".join(sorted(declared)) or "none"
            error(
                "extra_forbidden",
                key,
                f"Unknown query parameter (this route takes: {known})",
                values[0] if len(values) == 1 else values,
            )
            continue
        if len(values) > 1 and not parameter.repeatable:
            error("duplicate_parameter", key, "Query parameter given more than once", values)
            continue
        for value in values:
            if CONTROL_CHARACTERS.search(value):
                error("string_pattern_mismatch", key, "Control characters are not allowed", value)
            elif parameter.syntax and not parameter.syntax.pattern.fullmatch(value):
                error(parameter.syntax.error_type, key, parameter.syntax.message, value)
    return errors


_declared_by_route: dict[int, tuple[APIRoute, dict[str, QueryParameter]]] = {}


async def strict_query(request: Request) -> None:
    """App-level dependency: 422 for a query string the matched route does not declare exactly
    (unknown or repeated keys, control characters, integers or days in another script)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    cached = _declared_by_route.get(id(route))
    if cached is None or cached[0] is not route:  # routes are unhashable: keyed by identity
        cached = _declared_by_route[id(route)] = (route, declared_query(route))
    errors = _undecodable(request.scope["query_string"])
    errors = errors or query_errors(request.query_params.multi_items(), cached[1])
    if errors:
        raise RequestValidationError(errors)


def _undecodable(query_string: bytes) -> list[dict[str, Any]]:
    """Percent-escapes that are not UTF-8 (`%FF`): Starlette would read them as U+FFFD, so
    `site_id=a%FF` would quietly name another site."""
    for pair in query_string.split(b"&"):
        try:
            unquote_to_bytes(pair.replace(b"+", b" ")).decode()
        except UnicodeDecodeError:
            key = unquote_to_bytes(pair.partition(b"=")[0]).decode(errors="replace")
            return [query_error("string_unicode", key, "Input should be UTF-8", pair.decode())]
    return []


def query_error(kind: str, key: str, msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": ("query", key), "msg": msg, "input": value}


class NoQueryOnDocs:
    """FastAPI's own routes (the OpenAPI document and its pages) are not APIRoutes, which
    strict_query checks: they take no parameters either."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["query_string"] and scope["path"] in self.paths:
            key = scope["query_string"].split(b"&")[0].partition(b"=")[0].decode("latin-1")
            error = query_error("extra_forbidden", key, "This route takes no query parameters", "")
            await JSONResponse({"detail": [error]}, status_code=422)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def strict_app(**options: Any) -> FastAPI:
    """A FastAPI app for a QueueFlow service: every route reads its query string exactly, and
    no 307 turns /path/ into /path (its Location would echo the request's Host header)."""
    app = FastAPI(dependencies=[Depends(strict_query)], redirect_slashes=False, **options)
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(NoQueryOnDocs, paths=frozenset(p for p in docs if p))
    return app

"""CSV answers (README "Reporting API", CSV): asked for by `format=csv` or `Accept: text/csv`.
The header row is named by the JSON keys; an answer's rows (`top_paths`, `points`, `rows`,
`sites`) become its lines, an answer of single figures one line (nested objects flattened as
`dropped.bot`); null is an empty cell. Freshness travels in X-QueueFlow-* headers."""

from __future__ import annotations

import csv
import io
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

Format = Literal["json", "csv"]
ROW_KEYS = ("top_paths", "points", "rows", "sites")
FRESHNESS = {"as_of": "X-QueueFlow-As-Of", "lag_entries": "X-QueueFlow-Lag"}
MEDIA_TYPE = "text/csv; charset=utf-8"


def wants_csv(request: Request, format: Format | None) -> bool:
    """format=csv, or an Accept header that ranks text/csv (or text/*) at least as high as
    JSON, q-values read."""
    if format is not None:
        return format == "csv"
    ranks: dict[str, float] = {}
    for part in request.headers.get("accept", "").split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            ranks[media] = max(ranks.get(media, 0.0), float(q))
        except ValueError:
            continue
    json = max(ranks.get(m, 0.0) for m in ("application/json", "application/*", "*/*"))
    csv_rank = ranks.get("text/csv", ranks.get("text/*", 0.0))
    return csv_rank > 0 and csv_rank >= json


def respond(request: Request, format: Format | None, answer: BaseModel) -> Response:
    """The answer as JSON, or as CSV when asked for; caches told that Accept decides."""
    response = (
        csv_response(answer)
        if wants_csv(request, format)
        else JSONResponse(answer.model_dump(mode="json", by_alias=True))
    )
    response.headers["Vary"] = "Accept"
    return response


def csv_response(answer: BaseModel) -> Response:
    data = answer.model_dump(mode="json")
    headers = {
        header: "" if data.get(key) is None else str(data[key])
        for key, header in FRESHNESS.items()
        if key in data
    }
    if "complete" in data:
        headers["X-QueueFlow-Complete"] = "true" if data["complete"] else "false"
    rows_key = next((key for key in ROW_KEYS if key in data), None)
    if rows_key is not None:
        lines = data[rows_key]
        row_type = type(answer).model_fields[rows_key].annotation.__args__[0]  # type: ignore[union-attr]
        columns = list(row_type.model_fields)
    else:
        line = _flat({k: v for k, v in data.items() if k not in FRESHNESS and k != "complete"})
        lines, columns = [line], list(line)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for line in lines:
        writer.writerow(_cell(line.get(c)) for c in columns)
    return Response(out.getvalue(), media_type=MEDIA_TYPE, headers=headers)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

"""Multipart forms of a buffered request body, as BentoML reads their text fields."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartParser

MAX_FILES = 4
MAX_FIELDS = 32


async def parse_form(scope: dict, body: bytes, in_memory: bool) -> FormData:
    """The multipart form of `body` (starlette's parser; raises what it raises on a malformed body).
    `in_memory`: no part is spooled to a temporary file (starlette's parser would write any part over 1 MiB
    to disk); for a body already bounded by the image limit, never for a video's or an archive's."""
    async def chunks():
        yield body

    parser = MultiPartParser(Headers(scope=scope), chunks(), max_files=MAX_FILES, max_fields=MAX_FIELDS,
                             max_part_size=max(len(body), MultiPartParser.max_part_size))
    if in_memory:
        parser.spool_max_size = len(body) + 1  # this parser only: it never rolls over to disk
    return await parser.parse()


def bentoml_text(value: str) -> Any:
    """A multipart text field as BentoML hands it to the API: JSON-decoded when it parses."""
    try:
        return json.loads(value)
    except ValueError:
        return value

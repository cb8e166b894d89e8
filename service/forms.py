"""What BentoML does with a request's fields, done where it does not run: a buffered body's multipart form,
its text fields decoded as BentoML decodes them, and the API's pydantic input model on them (the sync
direct path, job submit, and the job runners all call the handlers with what `api_kwargs` gives)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartParser

MAX_FILES = 4
MAX_FIELDS = 32
STAND_IN = Path(os.devnull)  # an upload's place in the API's input model, where its bytes are read elsewhere


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


def api_kwargs(spec: Any, fields: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """The API's handler keyword arguments: `fields` and `files` (name -> a path, or STAND_IN) through the API's
    pydantic input model, as BentoML validates a request; raises pydantic's ValidationError."""
    validated = spec.model_validate({**fields, **files})
    return {name: getattr(validated, name) for name in spec.model_fields}

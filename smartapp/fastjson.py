"""JSON with orjson where it reads and writes exactly what the standard library would.

https://github.com/ijl/orjson

orjson parses and serializes several times faster than `json`, which matters on the
app's largest JSON: a chart's FHIR pages, the sidebar's suggestions (about 100 KB an
answer, on every request) and the JSON columns they are read from. Where orjson would
refuse something or read it differently, the standard library does the work instead, so
what is accepted, every error raised and every value read is `json`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

#: 2**64 has 20 digits: any integer orjson cannot hold exactly has at least as many. Found
#: by mapping every digit to "0" and looking for twenty (a tenth of a regex's time).
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_TWENTY_DIGITS = b"0" * 20

#: Sorted keys as Flask writes them; datetimes and dataclasses are handed to the caller's
#: `default`, as `json.dumps` hands them (Flask writes a datetime as an HTTP date).
_DUMPS_OPTIONS = (
    orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def loads(content: bytes | str) -> Any:
    """`json.loads(content)`, faster.

    orjson reads an integer beyond 64 bits as a float; `json` keeps it exact. A run of 20
    or more digits (possibly such an integer; often a long id, then merely slower) goes to
    `json`, and so does anything orjson refuses (`NaN`, which `json` accepts)."""
    raw = content if isinstance(content, bytes) else content.encode()
    if _TWENTY_DIGITS in raw.translate(_DIGITS_AS_ZERO):
        return json.loads(content)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


def dumps_sorted(
    value: Any, *, default: Callable[[Any], Any], indent: bool = False
) -> bytes | None:
    """`value` as compact JSON with sorted keys (indented by 2 when `indent`), as Flask's
    provider writes it, but UTF-8 rather than `\\u` escapes; None when orjson cannot write
    it as `json.dumps` would (a non-string key, an integer beyond 64 bits, an object
    `default` refuses): the caller then uses `json.dumps`. A float that is not finite is
    written `null` (`json` writes `NaN`, which no browser's JSON.parse reads)."""
    options = _DUMPS_OPTIONS | (orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(value, default=default, option=options)
    except orjson.JSONEncodeError:
        return None

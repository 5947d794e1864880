"""JSON parsed with limits: depth, number size, and well-formed text (RFC 8259).

Python's `json` accepts what a store or a later step cannot take: nesting deep enough to
raise RecursionError, integers of thousands of digits (an SQL INTEGER overflows, and so
does a 4,300-digit int conversion), `NaN` and `1e400` (infinity), lone UTF-16
surrogates (`"\\ud800"`) that no UTF-8 encoder will write, and NUL characters that
PostgreSQL's text columns refuse. `loads()` refuses each with an
`UnsafeJSON` (a ValueError) whose message says what was wrong and never quotes the input.
https://www.rfc-editor.org/rfc/rfc8259#section-8.2
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Deeper than any body the browser or an admin script sends.
DEFAULT_MAX_DEPTH = 32
#: Integers beyond this lose precision in JavaScript and overflow a 64-bit column anyway.
MAX_SAFE_INTEGER = 2**53 - 1

_SURROGATE = re.compile("[\ud800-\udfff]")


class UnsafeJSON(ValueError):
    """Not JSON, or JSON beyond the limits; the message is safe to show."""


def _parse_int(text: str) -> int:
    # Checked on the digits before conversion: int() of a huge string is itself slow.
    if len(text.lstrip("-")) > 16 or abs(int(text)) > MAX_SAFE_INTEGER:
        raise UnsafeJSON(f"a number is out of range (at most {MAX_SAFE_INTEGER} in magnitude)")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or abs(value) > MAX_SAFE_INTEGER:
        raise UnsafeJSON(f"a number is out of range (at most {MAX_SAFE_INTEGER} in magnitude)")
    return value


def _parse_constant(name: str) -> Any:
    raise UnsafeJSON(f"{name} is not a JSON number")


def loads(data: bytes | str, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The JSON value in `data`; UnsafeJSON when it is not JSON or breaks a limit."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeJSON("the body is not UTF-8") from None
    else:
        text = data
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except UnsafeJSON:
        raise
    except RecursionError:
        raise UnsafeJSON(f"the JSON is nested more than {max_depth} levels deep") from None
    except json.JSONDecodeError as exc:
        # The position is safe to show; the document is not.
        raise UnsafeJSON(f"not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:
        # int() past Python's 4,300-digit limit (parse_int checks first; kept as a net).
        raise UnsafeJSON("not valid JSON") from None
    check(value, max_depth=max_depth)
    return value


def check(value: Any, *, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise UnsafeJSON if `value` nests deeper than `max_depth` or holds a lone surrogate."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise UnsafeJSON("the text holds an invalid character (a lone UTF-16 surrogate)")
            if "\x00" in item:
                # Valid JSON, but PostgreSQL's text columns cannot hold it.
                raise UnsafeJSON("the text holds a NUL character")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise UnsafeJSON(f"the JSON is nested more than {max_depth} levels deep")
            if isinstance(item, dict):
                stack.extend((key, depth + 1) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)

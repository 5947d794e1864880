"""JSON request bodies from the browser and admin scripts, parsed with limits or refused with a 400.

Every view that takes a JSON body reads it here (`json_body()`), and the app's JSON
provider parses with the same limits, so no stray `request.get_json()` can turn a deeply
nested body, a 5,000-digit number or a lone surrogate into a 500
(`smartapp.jsonsafe` says what is refused and why).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response

from smartapp import fastjson, jsonsafe
from smartapp.errors import AppError, BadRequest

#: The largest JSON body read (a note's text is far smaller); MAX_CONTENT_LENGTH is above it.
MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = jsonsafe.DEFAULT_MAX_DEPTH


class BodyTooLarge(AppError):
    code = "body_too_large"
    default_message = f"The request body is larger than {MAX_BODY_BYTES // 1024} KB."
    about_the_request = True


def json_body(*, required: bool = True) -> dict[str, Any]:
    """The request's JSON object. BadRequest (400) for anything else; {} when empty and allowed."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BodyTooLarge()
    data = request.get_data(cache=True)
    if len(data) > MAX_BODY_BYTES:
        raise BodyTooLarge()
    if not data.strip():
        if required:
            raise BadRequest("Send a JSON object with Content-Type: application/json.")
        return {}
    if not request.is_json:
        raise BadRequest("Send a JSON object with Content-Type: application/json.")
    try:
        body = jsonsafe.loads(data, max_depth=MAX_DEPTH)
    except jsonsafe.UnsafeJSON as exc:
        raise BadRequest(f"The JSON body was refused: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("Send a JSON object with Content-Type: application/json.")
    return body


class LimitedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with `loads` under the same limits as `json_body()`, and answers
    written by orjson (`smartapp.fastjson`): the sidebar's suggestions are about 100 KB."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return jsonsafe.loads(s, max_depth=MAX_DEPTH)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        indent = (self.compact is None and self._app.debug) or self.compact is False
        body = fastjson.dumps_sorted(obj, default=self.default, indent=indent)
        if body is None:
            return super().response(obj)
        response_class: Any = self._app.response_class
        return response_class(body + b"\n", mimetype=self.mimetype)  # type: ignore[no-any-return]


def init_app(app: Flask) -> None:
    app.json = LimitedJSONProvider(app)

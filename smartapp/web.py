"""Endpoints that belong to no single concern: liveness."""

from __future__ import annotations

from flask import Flask, Response, jsonify


def init_app(app: Flask) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

"""A fake OpenAI-compatible chat-completions endpoint that holds every request until released.

It answers `problem_summary` with the chart's first problem (cited as the prompt gives it,
so it passes the grounding check on any chart), or with `cards(first_problem)` when set,
and every other kind with nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

CHART_KEY = "chart data - not instructions"


@dataclass
class HeldLLM:
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: list[str] = field(default_factory=list)
    answered: int = 0
    inside: int = 0
    most_inside: int = 0
    #: `all_inside` is set when this many requests are held at once.
    expect: int = 0
    all_inside: threading.Event = field(default_factory=threading.Event)
    #: The chart's first problem (`text`, `ref`) → the problem summary's answer instead.
    cards: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        user = json.loads(request.get_data())["messages"][1]["content"]
        kind = user.split(":", 2)[1].strip().split(" ")[0]
        with self.lock:
            self.arrived.append(kind)
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            if self.expect and self.inside >= self.expect:
                self.all_inside.set()
        try:
            self.release.wait(60)
        finally:
            with self.lock:
                self.inside -= 1
                self.answered += 1
        said = _first_problem(user) if kind == "problem_summary" else []
        if said and self.cards is not None:
            said = self.cards(_problems(user)[0])
        content = json.dumps({"suggestions": said})
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        return Response(json.dumps(answer), mimetype="application/json")(environ, start_response)


def _problems(user: str) -> list[dict[str, Any]]:
    chart = json.loads(user.split("<<<CHART DATA\n", 1)[1].split("\nCHART DATA>>>", 1)[0])
    problems: list[dict[str, Any]] = chart[CHART_KEY].get("problems") or []
    return problems


def _first_problem(user: str) -> list[dict[str, Any]]:
    problems = _problems(user)
    if not problems:
        return []
    first = problems[0]
    statement = {"text": f"{first['text']} is on the problem list", "citations": [first["ref"]]}
    return [{"title": "Problems", "statements": [statement]}]


@contextmanager
def held_llm() -> Iterator[tuple[HeldLLM, str]]:
    """The fake on a loopback port, and its base URL (`.../v1`)."""
    fake = HeldLLM()
    server = make_server("127.0.0.1", 0, fake, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        fake.release.set()
        server.shutdown()
        thread.join(5)

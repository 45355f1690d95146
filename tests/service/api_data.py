"""Tiny deterministic pools and queries for the service tests (written by the tests themselves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

TOPICS = ["apples", "trains", "rectangles", "savings accounts", "marbles", "recipes", "clocks", "bicycles"]


def qa_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        a, b = (i * 7 + seed) % 23 + 2, (i * 5 + seed) % 17 + 3
        topic = TOPICS[(i + seed) % len(TOPICS)]
        out.append(
            {
                "question": f"A shop has {a} {topic} and gets {b} more. How many {topic} now?",
                "answer": f"{a} + {b} = {a + b}. The answer is {a + b}.",
            }
        )
    if n > 10:
        out[-1] = dict(out[3])  # one duplicate text: copies must come out together
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def query_records() -> list[dict[str, str]]:
    return [
        {"question": "How many apples after buying more?", "answer": "Add them up."},
        {"question": "A train travels between two cities.", "answer": "Use speed times time."},
        {"question": "What is the area of a rectangle?", "answer": "Multiply the sides."},
        {"question": "Interest on a savings account", "answer": "Principal times rate."},
        {"question": "Sort the marbles by colour", "answer": "Count each colour."},
    ]


def post_select(url: str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/select", json=body, headers=headers or {}, timeout=60)


def metric(service: str | httpx.Client, name: str, headers: dict[str, str] | None = None) -> float:
    """Sum of every sample of ``name`` (labels included) in /metrics of a URL or a client (TestClient)."""
    if isinstance(service, str):
        text = httpx.get(f"{service}/metrics", headers=headers or {}, timeout=10).text
    else:
        text = service.get("/metrics", headers=headers or {}).text
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} not in /metrics"
    return total


def free_port_here() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

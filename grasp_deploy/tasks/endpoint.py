"""An OpenAI-compatible endpoint as the tasks see it: its URL, the served model's name, and one
request helper whose every failure is a one-line ``GraspError``."""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from ..core.errors import GraspError
from ..server.net import http_request


@dataclass(frozen=True)
class Endpoint:
    url: str  # http://HOST:PORT (the server's base URL)
    model: str  # the served model name
    api_key: str | None = None


def request(endpoint: Endpoint, path: str, body: dict[str, Any] | None,
            timeout: float) -> Any:
    """POST ``body`` (GET without one) to the endpoint; the server's refusal is one GraspError."""
    try:
        return json.loads(http_request(endpoint.url.rstrip("/") + path, body, endpoint.api_key,
                                       timeout))
    except urllib.error.HTTPError as err:  # the server's reason, in one line
        detail = err.read().decode(errors="replace").strip().replace("\n", " ")[:300]
        raise GraspError(f"{endpoint.url}{path} refused the request (HTTP {err.code}): "
                         f"{detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise GraspError(f"{endpoint.url} cannot be reached ({err}): is the server running "
                         "there?") from None


def check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise GraspError(f"--url {url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000")


def served_model(url: str, api_key: str | None = None) -> Endpoint:
    """The endpoint of the (first) model an OpenAI-compatible server at ``url`` serves."""
    check_url(url)
    listing = request(Endpoint(url, "", api_key), "/v1/models", None, timeout=30.0)
    names = [m.get("id") for m in listing.get("data", []) if m.get("id")]
    if not names:
        raise GraspError(f"{url}/v1/models lists no model")
    return Endpoint(url, names[0], api_key)


def parallel_map(fn: Callable[[Any], Any], items: list[Any], width: int,
                 done: Callable[[int], None]) -> list[Any]:
    """``fn`` over ``items`` on ``width`` threads, results in order; ``done(n)`` as they end."""
    out: list[Any] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=max(1, width)) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for n, future in enumerate(as_completed(futures), start=1):
            out[futures[future]] = future.result()
            done(n)
    return out

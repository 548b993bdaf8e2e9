"""Addresses and ports (can the server bind here, a free port, a host in a URL) and the HTTP
requests and pages the launcher reads from a running server."""

from __future__ import annotations

import errno
import ipaddress
import json
import re
import socket
import urllib.request
from typing import Any

from ..core.errors import GraspError


def http_request(url: str, body: dict[str, Any] | None = None, api_key: str | None = None,
                 timeout: float = 5.0) -> str:
    """GET ``url`` (POST ``body`` as JSON when given), with the bearer token when there is one;
    the reply's text. urllib's errors propagate for the caller to word."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


class AddressError(GraspError):
    """The host or port cannot be served on; the message says which and why."""


def check_bindable(host: str, port: int) -> None:
    """Fail with the real reason when ``host:port`` cannot be bound (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise AddressError(f"--host {host}: unknown host ({err.strerror}); give an address of this "
                           "machine, e.g. 127.0.0.1") from err
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as err:
                raise AddressError(_bind_problem(host, port, err)) from err


def _bind_problem(host: str, port: int, err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use; pass another --port"
    if err.errno == errno.EADDRNOTAVAIL:
        return (f"--host {host} is not an address of this machine; use 127.0.0.1 (this machine "
                "only) or 0.0.0.0 (every interface)")
    if err.errno == errno.EACCES:
        return (
            f"port {port} on {host} needs privileges (ports below 1024); pass a --port above 1023"
        )
    return f"cannot listen on {host}:{port} ({err.strerror}); pass another --host or --port"


def port_in_use(host: str, port: int) -> bool:
    try:
        check_bindable(host, port)
    except AddressError:
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: IPv6 literals in brackets."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_cache_info(metrics: str) -> dict[str, float]:
    """Labels of ``vllm:cache_config_info`` from a Prometheus text page, as numbers."""
    line = next(
        (line_ for line_ in metrics.splitlines() if line_.startswith("vllm:cache_config_info{")),
        None,
    )
    if line is None:
        return {}
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    out = {}
    for key, value in labels.items():
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out

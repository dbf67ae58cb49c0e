"""Addresses: which host names mean this machine's loopback, and URLs for host:port."""

from __future__ import annotations

__all__ = ["LOCAL_HOSTS", "LOOPBACK", "http_url"]

LOOPBACK = "127.0.0.1"
LOCAL_HOSTS = frozenset({"localhost", LOOPBACK, "::1"})


def http_url(host: str, port: int) -> str:
    """`http://host:port`, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

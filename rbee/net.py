"""Addresses: which host names mean this machine's loopback, URLs for host:port, URLs with
their secrets hidden, and who is at the other end of a Unix socket or a loopback connection."""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "LOCAL_HOSTS",
    "LOOPBACK",
    "LOOPBACK_NAMES",
    "SENSITIVE",
    "hide_url_secrets",
    "http_url",
    "https_url",
    "loopback_peer_uid",
    "peer_credentials",
]

#: What a hidden secret reads as, wherever rbee prints or stores one.
SENSITIVE = "(sensitive)"
# A URL in running text: a scheme, then up to a space, a quote or a bracket that ends it.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")

LOOPBACK = "127.0.0.1"
LOCAL_HOSTS = frozenset({"localhost", LOOPBACK, "::1"})
#: The names of this machine's loopback, for certificates (in a fixed order).
LOOPBACK_NAMES = (LOOPBACK, "::1", "localhost")


def hide_url_secrets(text: str) -> str:
    """`text` with the secrets of every URL in it hidden: the user and password
    (`https://(sensitive)@host/…`) and every query value (`?sig=(sensitive)`: presigned and
    tokened URLs carry credentials there). The rest stays, so the URL is still recognisable."""
    return _URL.sub(_hide, text) if "://" in text else text


def _hide(match: re.Match[str]) -> str:
    url = match[0]
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    scheme_end = len(parts.scheme) + 3
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{SENSITIVE}@{netloc.rpartition('@')[2]}"
    shown = url[:scheme_end] + netloc + url[scheme_end + len(parts.netloc) :]
    if parts.query:
        hidden = "&".join(
            f"{pair.partition('=')[0]}={SENSITIVE}" if "=" in pair else SENSITIVE
            for pair in parts.query.split("&")
        )
        shown = shown.replace(f"?{parts.query}", f"?{hidden}", 1)
    return shown


def http_url(host: str, port: int) -> str:
    """`http://host:port`, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def https_url(host: str, port: int) -> str:
    """`https://host:port`, with an IPv6 address in brackets."""
    return "https" + http_url(host, port).removeprefix("http")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    return pid, uid, gid


def loopback_peer_uid(peer: tuple[Any, ...], local: tuple[Any, ...]) -> int | None:
    """The user owning the socket at `peer` connected to our `local` address, both on this
    machine (the kernel's table of TCP sockets: /proc/net/tcp, tcp6); None when not found."""
    want = (_proc_address(peer), _proc_address(local))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and (fields[1], fields[2]) == want:
                return int(fields[7])
    return None


def _proc_address(address: tuple[Any, ...]) -> str:
    """`(host, port)` as /proc/net/tcp writes it: the address's bytes as native-endian 32-bit
    words in hex, a colon, the port in hex."""
    packed = ipaddress.ip_address(address[0]).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words) + f":{int(address[1]):04X}"

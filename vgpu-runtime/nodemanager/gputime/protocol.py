"""The wire format between the GPU time scheduler and its clients (version 1).

Text lines of ASCII, each ended by `\\n` and at most `MAX_LINE_BYTES` long; fields separated
by one space; times in whole microseconds; shares in basis points (1/10000 of the GPU's
time). A client speaks first:

    client: HELLO 1
    server: WELCOME 1 <window_us> <min_token_us>
    server: QUOTA <guarantee_bp> <cap_bp> <throttled 0|1>      (now and on every change)
    client: ACQUIRE
    server: GRANT <sequence> <length_us>                        (when the token is its turn)
    client: RELEASE <sequence> <used_us>                        (done, or returned early)
    server: REVOKE <sequence>                                   (kept past its end and grace)
    server: ERR <code> <text>                                   (then the server hangs up)

Error codes: `version` (the HELLO asks a version the server does not speak; the text lists
those it does), `syntax` (a line that is not one of the above, or too long), `state` (a
command out of turn, e.g. ACQUIRE before HELLO), `limit` (the container has too many
connections open already; sent on connecting).
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = 1
MAX_LINE_BYTES = 128
BASIS_POINTS = 10000


class ProtocolError(Exception):
    """A line that breaks the protocol; `code` is the ERR code to answer with."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


@dataclass(frozen=True)
class Hello:
    version: int


@dataclass(frozen=True)
class Acquire:
    pass


@dataclass(frozen=True)
class Release:
    sequence: int
    used_us: int


Command = Hello | Acquire | Release


def _number(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ProtocolError("syntax", f"{what} must be a whole number (got {text[:20]!r})")
    return int(text)


def parse_command(line: bytes) -> Command:
    """One client line (without its `\\n`)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError as err:
        raise ProtocolError("syntax", "lines must be ASCII") from err
    fields = text.split(" ")
    match fields:
        case ["HELLO", version]:
            return Hello(_number(version, "the version"))
        case ["ACQUIRE"]:
            return Acquire()
        case ["RELEASE", sequence, used]:
            return Release(_number(sequence, "the sequence"), _number(used, "the time used"))
    raise ProtocolError("syntax", f"expected HELLO, ACQUIRE or RELEASE (got {text[:40]!r})")


def microseconds(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


def basis_points(fraction: float) -> int:
    return max(0, min(BASIS_POINTS, round(fraction * BASIS_POINTS)))


def welcome(window_seconds: float, min_token_seconds: float) -> bytes:
    return (
        f"WELCOME {VERSION} {microseconds(window_seconds)} {microseconds(min_token_seconds)}\n"
    ).encode()


def quota(guarantee: float, cap: float, throttled: bool) -> bytes:
    return f"QUOTA {basis_points(guarantee)} {basis_points(cap)} {int(throttled)}\n".encode()


def grant(sequence: int, length_seconds: float) -> bytes:
    return f"GRANT {sequence} {microseconds(length_seconds)}\n".encode()


def revoke(sequence: int) -> bytes:
    return f"REVOKE {sequence}\n".encode()


def error(code: str, text: str) -> bytes:
    clean = "".join(c if c.isascii() and c.isprintable() else "?" for c in text)
    return f"ERR {code} {clean}"[: MAX_LINE_BYTES - 1].encode() + b"\n"

"""Standalone auth: the static tokens file, parsed and reloaded when it changes.

The file maps static tokens to namespaces (`tokens: [{token, namespace}]`). In a cluster it
is usually a Secret mounted as a folder: the kubelet updates it by swapping a symlink, so
the file's own mtime says nothing. `TokenTable` therefore compares the content (SHA-256), at
most once per check interval, on the calling thread, like the budgets file: a new file that
does not parse is logged with every reason and the last good set of tokens stays in force;
the same bad content is logged only once. Tokens are kept as SHA-256 digests, never logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import yaml

from timekeeper.errors import ConfigError
from timekeeper.reports import is_namespace_name
from timekeeper.watched_file import WatchedFile

logger = logging.getLogger(__name__)

MIN_TOKEN_LENGTH: Final = 16
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
"""A tokens file larger than this is refused before it is parsed."""


def token_digest(token: str) -> str:
    """How a token is kept and looked up: its SHA-256, in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_tokens(path: Path) -> dict[str, str]:
    """The tokens file as {sha256(token): namespace}; `ConfigError` lists every problem."""
    return _parse_content(_read(path), source=str(path))


def parse_tokens(document: Any, *, source: str = "tokens file") -> dict[str, str]:
    """A parsed YAML document as {sha256(token): namespace}; `ConfigError` lists every
    problem with its field path, describing tokens (their length) without printing them."""
    problems: list[str] = []
    table: dict[str, str] = {}
    if not isinstance(document, dict) or set(document) != {"tokens"}:
        raise ConfigError(
            [f"{source}: must be a mapping with one key `tokens` (got {_shape(document)})"]
        )
    entries = document["tokens"]
    if not isinstance(entries, list):
        raise ConfigError([f"{source}: tokens: must be a list (got {_shape(entries)})"])
    if not entries:
        # With no token every report is refused: a mistake, never a set-up.
        raise ConfigError(
            [f"{source}: tokens: must list at least one {{token, namespace}} (got an empty list)"]
        )
    for index, entry in enumerate(entries):
        where = f"{source}: tokens[{index}]"
        if not isinstance(entry, dict):
            problems.append(
                f"{where}: must be a mapping {{token, namespace}} (got {_shape(entry)})"
            )
            continue
        for key in sorted(set(entry) - {"token", "namespace"}, key=str):
            problems.append(f"{where}.{key}: unknown key (the keys are token, namespace)")
        token, namespace = entry.get("token"), entry.get("namespace")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            # The value is a secret: describe it, never print it.
            problems.append(
                f"{where}.token: must be a string of at least {MIN_TOKEN_LENGTH} characters "
                f"(got {_shape(token)})"
            )
            token = None
        if not isinstance(namespace, str) or not is_namespace_name(namespace):
            problems.append(
                f"{where}.namespace: must be a namespace name (RFC 1123 label) (got {namespace!r})"
            )
            namespace = None
        if token is not None and namespace is not None:
            digest = token_digest(token)
            if digest in table:
                problems.append(f"{where}.token: the same token is listed twice")
            table[digest] = namespace
    if problems:
        raise ConfigError(problems)
    return table


class TokenTable(WatchedFile[dict[str, str]]):
    """The static tokens in force; `namespace_of()` is cheap and thread-safe.

    Built from a fixed table (`TokenTable.fixed`) or from a file (`TokenTable.from_file`),
    which is checked for changes at most every `check_interval_seconds` when a token is
    looked up.
    """

    error = ConfigError
    kind = "tokens"
    kept = "the last good tokens stay"
    logger = logger

    def __init__(
        self,
        table: dict[str, str],
        *,
        path: Path | None = None,
        content_digest: str | None = None,
        check_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            path,
            content_digest=content_digest,
            check_interval_seconds=check_interval_seconds,
            clock=clock,
        )
        self._table = table
        self.last_error: list[str] | None = None

    @classmethod
    def fixed(cls, table: dict[str, str]) -> TokenTable:
        """A table that never changes (tests, or tokens given by the embedding program)."""
        return cls(table)

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        check_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> TokenTable:
        """Load `path` now; a missing or invalid file raises `ConfigError`."""
        content = _read(path)
        return cls(
            _parse_content(content, source=str(path)),
            path=path,
            content_digest=_content_digest(content),
            check_interval_seconds=check_interval_seconds,
            clock=clock,
        )

    def namespace_of(self, token: str) -> str | None:
        """The namespace of a static token, or None when it is not one."""
        self._checked()
        return self._table.get(token_digest(token))

    def __len__(self) -> int:
        return len(self._table)

    def _read(self, path: Path) -> bytes:
        return _read(path)

    def _parse(self, content: bytes, path: Path) -> dict[str, str]:
        return _parse_content(content, source=str(path))

    def _accept(self, value: dict[str, str], digest: str) -> None:
        self._table = value

    def _describe(self, value: dict[str, str]) -> str:
        return f"{len(value)} tokens for {len(set(value.values()))} namespaces"


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            content = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError([f"{path}: cannot read ({err.strerror or err})"]) from err
    if len(content) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: at most {MAX_FILE_BYTES} bytes (got more)"])
    return content


def _parse_content(content: bytes, *, source: str) -> dict[str, str]:
    try:
        document = yaml.safe_load(content.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError([f"{source}: cannot read a YAML document ({err})"]) from err
    return parse_tokens(document, source=source)


def _content_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _shape(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a {type(value).__name__}"

"""A server TLS context that follows its certificate files (adapter).

Gunicorn asks for an SSLContext for every new connection; this keeps one and rebuilds it
only when the certificate or key file changes (checked at most every `check_seconds`). A
half-written pair (new certificate, old key) fails to load and the previous context stays
in use until the pair matches, so rotation never drops a connection.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int], ...]


class ReloadingContext:
    """Hands out the SSLContext of the current certificate files."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        *,
        check_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._check_seconds = check_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._context = self._build()
        self._checked_at = clock()

    def _stat(self) -> Signature:
        # Kubernetes Secret volumes swap a symlink; stat follows it to the new file.
        stats = [os.stat(path) for path in (self._cert_file, self._key_file)]
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert_file, self._key_file)
        return context

    def context(self) -> ssl.SSLContext:
        now = self._clock()
        if now - self._checked_at < self._check_seconds:
            return self._context
        with self._lock:
            if now - self._checked_at < self._check_seconds:
                return self._context
            self._checked_at = now
            try:
                signature = self._stat()
                if signature != self._signature:
                    self._context = self._build()
                    self._signature = signature
                    log.info("serving the rotated certificate from %s", self._cert_file)
            except (OSError, ssl.SSLError, ValueError) as err:
                log.warning("new certificate files do not load yet (%s); keeping the old", err)
        return self._context

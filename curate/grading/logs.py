"""Warnings that would repeat millions of times (graders run per sample) are logged once per process."""

from __future__ import annotations

import logging
import threading

_seen: set[str] = set()
_lock = threading.Lock()


def warn_once(logger: logging.Logger, key: str, msg: str, *args: object) -> None:
    """``logger.warning(msg, *args)`` the first time ``key`` is seen, ``logger.debug`` afterwards."""
    with _lock:
        first = key not in _seen
        _seen.add(key)
    (logger.warning if first else logger.debug)(msg, *args)

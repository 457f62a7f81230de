"""A time limit for Python code running in ANY thread.

math-verify bounds sympy with ``signal.alarm``, which only works in the main thread; but graders run
in verl's reward workers (``loop.run_in_executor`` threads) and in Ray actor threads, where
math-verify with a timeout raises ``ValueError`` and without one can run unbounded. Here a timer
thread instead raises :class:`DeadlineExceeded` inside the guarded thread
(``PyThreadState_SetAsyncExc``, CPython's way to interrupt another thread).

Like a signal handler, it takes effect at the next bytecode, so:
- a single long C call (a huge integer power in GMP) finishes first; callers keep such inputs away
  (see ``mathexpr.sympy_safe``);
- an exception at an arbitrary bytecode can break the code it lands in. It is never delivered while
  the thread imports a module (an interrupted import leaves sympy half-initialised: every later
  comparison fails), runs ``logging``/``threading`` code (a lock could stay held) or a weak-reference
  callback; the timer retries every few milliseconds until the thread is out of those, so the
  deadline can be overrun by the length of one import;
- an exception swallowed where it landed (by a ``__del__``, or code catching ``BaseException``) is
  raised again every ``_REFIRE_S`` until the guarded call ends;
- it is only raised while the guarded function runs (its caller's frame is on the stack, below the
  running frame), and one still pending when it returns is withdrawn.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import FrameType
from typing import TypeVar

T = TypeVar("T")

_RETRY_S = 0.005
_REFIRE_S = 0.1
_DO_NOT_INTERRUPT = (
    "importlib._bootstrap",
    "importlib._bootstrap_external",
    "logging",
    "threading",
    "_weakrefset",
    "weakref",
)


_ENDS_AT: ContextVar[float] = ContextVar("grading_ends_at", default=math.inf)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Code inside may spend ``seconds`` in all (nested limits take the earlier end); deadlines set
    inside read what is left with :func:`time_left`."""
    token = _ENDS_AT.set(min(_ENDS_AT.get(), time.monotonic() + seconds))
    try:
        yield
    finally:
        _ENDS_AT.reset(token)


def time_left() -> float:
    """Seconds left of the innermost :func:`time_limit` (infinite outside any)."""
    return _ENDS_AT.get() - time.monotonic()


class DeadlineExceeded(BaseException):
    """Raised inside the guarded code. A BaseException, so library code that catches ``Exception``
    (sympy, math-verify) cannot swallow it."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else ctypes.c_void_p(0)
    )


def _where(frame: FrameType | None, guard: FrameType) -> str:
    """ "inside" the guarded function, "delicate" code inside it, or "outside" of it."""
    if frame is None or frame is guard:
        return "outside"
    delicate = False
    while frame is not None:
        if frame is guard:
            return "delicate" if delicate else "inside"
        module = frame.f_globals.get("__name__", "")
        delicate = delicate or module in _DO_NOT_INTERRUPT or module.startswith("logging.")
        frame = frame.f_back
    return "outside"


def run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """``fn()`` in the calling thread; raises ``TimeoutError`` once it has run ``seconds``."""
    thread_id, guard = threading.get_ident(), sys._getframe()
    lock = threading.Lock()
    state = {"running": True, "fired": False}

    def fire() -> None:
        with lock:
            if not state["running"]:
                return
            where = _where(sys._current_frames().get(thread_id), guard)
            if where == "inside":
                _raise_in(thread_id, DeadlineExceeded)
                state["fired"] = True
            if where != "outside":  # not delivered yet, or delivered and swallowed: check again
                retry = threading.Timer(_RETRY_S if where == "delicate" else _REFIRE_S, fire)
                retry.daemon = True
                retry.start()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        try:
            return fn()
        finally:
            timer.cancel()
            with lock:
                state["running"] = False
                if state["fired"]:  # possibly fired but not yet delivered: withdraw it
                    _raise_in(thread_id, None)
    except DeadlineExceeded:
        raise TimeoutError(f"gave up after {seconds:g} s") from None

"""Storage calls retried with exponential backoff when the storage is briefly unreachable.

Only transient failures are retried (no connection, timeouts, a dropped connection, S3 5xx that
s3fs reports as a bare ``OSError``); a missing file, a permission error or a malformed file is
an answer, not an outage, and is raised at once. Built on ``tenacity``.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import tenacity

T = TypeVar("T")
log = logging.getLogger(__name__)

#: exception class names (anywhere in the MRO) that mean "the endpoint did not answer"
TRANSIENT_NAMES = frozenset({
    "ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
    "ConnectionClosedError", "ClientConnectorError", "ServerDisconnectedError", "ClientOSError",
    "ServerTimeoutError", "TimeoutError", "ConnectionResetError", "BrokenPipeError",
    "EndpointUnreachable",
})
MAX_WAIT_S = 30.0


def is_transient(exn: BaseException) -> bool:
    """True for errors worth retrying: the storage did not answer (see the module doc)."""
    for e in (exn, exn.__cause__):
        if e is None:
            continue
        if {c.__name__ for c in type(e).__mro__} & TRANSIENT_NAMES:
            return True
        if type(e) is OSError:  # s3fs's translation of 5xx / throttling; subclasses are answers
            return True
    return False


def with_backoff(fn: Callable[[], T], what: str, *, attempts: int = 6,
                 backoff_s: float = 0.5) -> T:
    """``fn()``, retried on transient storage errors: waits ``backoff_s``, then doubling (capped
    at 30 s), at most ``attempts`` calls in all.

    Args:
        what: named in the log lines, e.g. ``"list checkpoints of s3://runs/finetune"``.

    Raises:
        The last error, when every attempt failed or the error is not transient.
    """
    def warn(state: tenacity.RetryCallState) -> None:
        exn = state.outcome.exception()
        log.warning("%s: attempt %d/%d failed (%s: %s); retrying in %.1f s", what,
                    state.attempt_number, attempts, type(exn).__name__, exn,
                    state.next_action.sleep if state.next_action else 0.0)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=backoff_s, min=backoff_s, max=MAX_WAIT_S),
        before_sleep=warn, reraise=True)
    return retrying(fn)

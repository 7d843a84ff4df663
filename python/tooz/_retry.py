"""Retry decorator used by ``join_group_create``: only :class:`TryAgain` retries."""

import datetime

import tenacity
from tenacity import TryAgain  # noqa: F401 - re-exported


def _stop_for(stop_max_delay):
    if stop_max_delay is None or isinstance(stop_max_delay, bool):
        return tenacity.stop_never
    if isinstance(stop_max_delay, datetime.timedelta):
        stop_max_delay = stop_max_delay.total_seconds()
    return tenacity.stop_after_delay(stop_max_delay)


def retry(stop_max_delay=None, **kwargs):
    """Retry the decorated call while it raises ``TryAgain``, up to ``stop_max_delay`` seconds."""
    return tenacity.retry(
        wait=tenacity.wait_exponential(max=1),
        stop=_stop_for(stop_max_delay),
        retry=tenacity.retry_never,
    )

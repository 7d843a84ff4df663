"""tooz.utils pieces that services use directly."""

import futurist
import pytest

import tooz
from tooz import utils


@pytest.mark.parametrize("options, expected", [
    ({}, futurist.ThreadPoolExecutor),
    ({"executor": "thread"}, futurist.ThreadPoolExecutor),
    ({"executor": "threaded"}, futurist.ThreadPoolExecutor),
    ({"executor": "sync"}, futurist.SynchronousExecutor),
    ({"executor": "synchronous"}, futurist.SynchronousExecutor),
])
def test_proxy_executor_builds_futurists_executors(options, expected):
    executor = utils.ProxyExecutor.build("test", options)
    executor.start()
    try:
        assert isinstance(executor.executor, expected)
        assert executor.submit(lambda x: x * 2, 21).result() == 42
    finally:
        executor.stop()
    assert not executor.started
    with pytest.raises(tooz.ToozError):
        executor.submit(lambda: None)


def test_proxy_executor_refuses_unknown_kinds():
    with pytest.raises(tooz.ToozError):
        utils.ProxyExecutor.build("test", {"executor": "greenthread-pool-of-doom"})

"""Where the examples run: the URL given as the first argument, else ``file://`` in a
temporary directory removed afterwards."""

import contextlib
import sys
import tempfile


@contextlib.contextmanager
def example_url():
    if len(sys.argv) > 1:
        yield sys.argv[1]
        return
    with tempfile.TemporaryDirectory() as directory:
        yield "file://" + directory

"""Console entry points (``maskcd-*``)."""

from __future__ import annotations

import functools
import sys

from maskcd.errors import MaskCDError


def one_line_errors(prog: str):
    """Decorator for ``main()``: a :class:`MaskCDError` (or ValueError from the model registry) becomes one line on
    stderr and exit code 2; everything else propagates with its traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (MaskCDError, ValueError, FileNotFoundError) as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                print(f"{prog}: error: {msg}", file=sys.stderr)
                return 2

        return inner

    return wrap

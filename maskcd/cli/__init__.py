"""Console entry points (``maskcd-*``)."""

from __future__ import annotations

import functools
import sys

from maskcd.errors import MaskCDError


def release_process_group() -> None:
    """Tear down the ``torch.distributed`` group of an ``accelerate launch``/``torchrun`` run before the process exits.

    A gloo group left alive at interpreter exit can abort the process ("terminate called without an active
    exception", SIGABRT), which torchrun reports as a failed run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def one_line_errors(prog: str):
    """Decorator for ``main()``: a :class:`MaskCDError` (or ValueError from the model registry) becomes one line on
    stderr and exit code 2; everything else propagates with its traceback. The distributed group, if any, is
    released on the way out."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (MaskCDError, ValueError, FileNotFoundError) as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                print(f"{prog}: error: {msg}", file=sys.stderr)
                return 2
            finally:
                release_process_group()

        return inner

    return wrap

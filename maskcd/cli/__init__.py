"""Console entry points (``maskcd-*``)."""

from __future__ import annotations

import argparse
import functools
import sys
import traceback

from maskcd.errors import MaskCDError


def release_process_group() -> None:
    """Tear down the ``torch.distributed`` group of an ``accelerate launch``/``torchrun`` run before the process exits.

    A gloo group left alive at interpreter exit can abort the process ("terminate called without an active
    exception", SIGABRT), which torchrun reports as a failed run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


EXIT_BAD_INPUT = 2
"""Exit code of a :class:`MaskCDError` (bad input, output exists, bad checkpoint, full disk...)."""
EXIT_BUG = 1
"""Exit code of anything unexpected (a bug): the traceback is printed."""


class ArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose usage errors (unknown flag, ``--tile abc``, missing argument) are one
    line, ``PROG: error: MESSAGE (see PROG --help)``, with exit code 2 like every other bad input; sub-command parsers
    made by ``add_subparsers`` are of this class too."""

    def error(self, message: str):
        first = message.splitlines()[0] if message else "invalid arguments"
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {first} (see {self.prog} --help)\n")


def one_line_errors(prog: str):
    """Decorator for ``main()``: only a :class:`MaskCDError` becomes one line on stderr and exit code 2.

    Anything else is unexpected, i.e. a bug: its traceback is printed, then one line saying so, and the exit code is 1
    (``ValueError`` and friends are not turned into one line, so real bugs are not hidden). ``KeyboardInterrupt`` and
    ``SystemExit`` pass through. The distributed group, if any, is released on the way out.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except MaskCDError as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                print(f"{prog}: error: {msg}", file=sys.stderr)
                return EXIT_BAD_INPUT
            except Exception:
                traceback.print_exc()
                print(f"{prog}: unexpected error (a bug, not bad input): please report it with the traceback above",
                      file=sys.stderr)
                return EXIT_BUG
            finally:
                release_process_group()

        return inner

    return wrap

"""Entry point for `accelerate launch pipelines/test.py ...` / `torchrun pipelines/test.py ...` (same as `maskcd-test`)."""

import sys

from maskcd.cli.test import main

if __name__ == "__main__":
    sys.exit(main())

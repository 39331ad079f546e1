"""``maskcd-models``: print the model registry with parameter counts (``--published``: the task aliases)."""

from __future__ import annotations

import contextlib
import io

import torch

from maskcd.cli import ArgumentParser, one_line_errors
from maskcd.models import build_model, count_parameters, list_models
from maskcd.models.registry import preset_info, task_aliases


@one_line_errors("maskcd-models")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="maskcd-models", description="List registered change-detection models.")
    parser.add_argument("names", nargs="*", help="only these presets (default: all)")
    parser.add_argument("--published", action="store_true",
                        help="list the task aliases (--model mining, ...) with their Hub ids and source table rows")
    args = parser.parse_args(argv)
    if args.published:
        aliases = task_aliases()
        width = max([len(a) for a in aliases] + [5])
        hub = max([len(a.hub_id) for a in aliases.values()] + [6])
        print(f"{'alias'.ljust(width)}  {'hub id'.ljust(hub)}  source")
        for alias in aliases.values():
            print(f"{alias.name.ljust(width)}  {alias.hub_id.ljust(hub)}  {alias.source}")
        return 0
    names = args.names or list_models()
    rows = []
    for name in names:
        info = preset_info(name)
        with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
            model = build_model(name)
        n = count_parameters(model)
        rows.append((name, info["architecture"], f"{n / 1e6:.2f} M", f"{n / 2**20:.2f} Mi", info.get("description", "")))
    header = ("model", "architecture", "params", "params/2^20", "description")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Arguments several ``pt2i`` commands share."""

from __future__ import annotations

import argparse

SET_HELP = "override a config value, e.g. --set train.lr=3e-4 (repeatable)"


def add_overrides(p: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)

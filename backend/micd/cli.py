"""The `micd` command line: a thin door; each subcommand's options and work live in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from micd import __version__

# subcommand -> module exposing `register(subparsers)`; each registers a parser whose `func(args) -> int` runs it.
COMMANDS = {
    "train": "micd.training.command",
    "convert-checkpoint": "micd.training.convert",
    "predict": "micd.inference.command",
    "suggest": "micd.inference.suggest_command",
    "serve": "micd.inference.serve_command",
    "evaluate": "micd.evaluation.command",
    "info": "micd.info_command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="micd", description="MICD semi-supervised 3D segmentation: train, predict, "
                                     "evaluate and inspect models.")
    parser.add_argument("--version", action="version", version=f"micd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as e:
            if not (e.name and module.startswith(e.name)):  # that command is not installed in this build
                raise
    return parser


def tolerant_console() -> None:
    """Print what the console's encoding cannot show as escapes instead of failing: an ASCII locale (a bare
    container, `LC_ALL=C` with `PYTHONUTF8=0`) or a Windows code page must not turn a progress line into a crash."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Optional[List[str]] = None) -> int:
    tolerant_console()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

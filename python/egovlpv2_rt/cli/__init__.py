"""Command-line interface: ``egovlpv2`` (library, demo and training commands) and
``egovlpv2-export`` (:mod:`.export`).

- :mod:`.common`: one-line errors, the parser class, model options, JSON output;
- :mod:`.library`: embed, search, index, mcq, bench, info;
- :mod:`.demo`: the main job, offline, in one command;
- :mod:`.training`: synth, train, finetune, eval;
- :mod:`.episodic`, :mod:`.heads`: features, train-head, eval-head (EgoNLQ, EgoMQ);
- :mod:`.prepare`: prepare (official releases -> the files read here);
- :mod:`.paper`: flops (the paper's compute claim);
- :mod:`.qfvs`: summarize (and the QFVS parts of finetune and eval);
- :mod:`.export`: the ``egovlpv2-export`` entry point.

Every command is always listed; one whose optional dependency is missing fails when it runs,
with one line naming the package and the extra that installs it. Errors print one line
(``egovlpv2: error: ...``) and exit with status 1 (2 for usage errors); set
``EGOVLPV2_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse

from ..video.clip_list import parse_clip_arg, read_clip_list
from . import demo, episodic, heads, library, paper, prepare, qfvs, training
from .common import ArgParser, error_exit, one_line, run_command

__all__ = ["build_parser", "error_exit", "main", "one_line", "parse_clip_arg", "read_clip_list"]


def build_parser() -> argparse.ArgumentParser:
    """The ``egovlpv2`` parser with every command group registered."""
    p = ArgParser(
        prog="egovlpv2",
        description="EgoVLPv2 runtime: embed, search, answer, index, benchmark, train, evaluate.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgParser)
    sub.required = True
    for group in (demo, library, training, prepare, episodic, heads, qfvs, paper):
        group.add_subcommands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``egovlpv2`` entry point."""
    args = build_parser().parse_args(argv)
    return run_command("egovlpv2", f"egovlpv2 {args.command}", lambda: args.func(args))

"""``pt2i humaneval build | serve | report``: the side-by-side human study's command line.

    pt2i humaneval build --runs [NAME=]RUN_A [NAME=]RUN_B [...] --out STUDY [--attention-checks N] [--seed S]
                         [--prompts N]
    pt2i humaneval serve STUDY [--host 127.0.0.1] [--port 0] [--password PW]
    pt2i humaneval report STUDY [--out DIR]

A person's error (missing run, mismatched prompts, a non-loopback host without a password...) prints one line
and returns 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from evaluation.humaneval import HumanEvalError

PASSWORD_ENV = "PT2I_HUMANEVAL_PASSWORD"


def add_parser(sub) -> None:
    """Add ``humaneval`` and its actions to an argparse subparsers object."""
    he = sub.add_parser("humaneval", help="side-by-side human evaluation of two or more runs' samples (Table 6)")
    act = he.add_subparsers(dest="action", required=True)
    p = act.add_parser("build", help="build a study from the sample stage outputs of two or more runs")
    p.add_argument(
        "--runs",
        nargs="+",
        required=True,
        metavar="[NAME=]RUN",
        help="run directories (or their sample/ folders); the first is the reference, the rest baselines",
    )
    p.add_argument("--out", required=True, help="the study folder to create")
    p.add_argument(
        "--attention-checks",
        type=int,
        default=4,
        help="pairs showing a sample against a sample for another prompt (default 4)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt choice, checks and layouts")
    p.add_argument("--prompts", type=int, default=None, help="use N randomly chosen shared prompts (default all)")
    p = act.add_parser("serve", help="serve the rating page")
    p.add_argument("study")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a password)"
    )
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    p.add_argument("--password", default=None, help=f"study password (HTTP basic auth); default ${PASSWORD_ENV}")
    p = act.add_parser("report", help="write the preference table (Markdown, JSON) and a bar chart")
    p.add_argument("study")
    p.add_argument("--out", default=None, help="output folder (default STUDY/report)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "build":
            from evaluation.humaneval.study import build_study

            path = build_study(args.runs, args.out, args.attention_checks, args.seed, args.prompts)
            print(f"study: {path}")
        elif args.action == "serve":
            from evaluation.humaneval.serve import serve

            serve(
                args.study,
                args.host,
                args.port,
                args.password or os.environ.get(PASSWORD_ENV) or None,
                announce=lambda line: print(line, flush=True),
            )
        else:
            from evaluation.humaneval.report import write_report

            for path in write_report(args.study, args.out).values():
                print(f"report: {path}")
        return 0
    except HumanEvalError as exc:
        print(f"humaneval error: {exc}", file=sys.stderr)
        return 2

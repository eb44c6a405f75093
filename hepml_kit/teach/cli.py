"""`hepml-kit exercises build|strip` and `hepml-kit curriculum run`: their arguments (`add_parser`); the work
is done by `hepml_kit.teach.exercises` and `hepml_kit.teach.curriculum_run`, imported when a command runs
(nbformat and papermill are not needed to build the parser)."""

from __future__ import annotations

__all__ = ["add_parser", "curriculum_main", "exercises_main"]


def exercises_main(args) -> int:
    """`hepml-kit exercises build [--check]` and `hepml-kit exercises strip`."""
    from hepml_kit.teach.exercises import run_cli

    return run_cli(args.action, args.check)


def curriculum_main(args) -> int:
    """`hepml-kit curriculum run`: execute the lessons headless and write summary.md."""
    from hepml_kit.teach.curriculum_run import main

    return main(args)


def add_parser(sub) -> None:
    """Register `exercises` and `curriculum` on the `hepml-kit` subparsers `sub`."""
    p = sub.add_parser("exercises",
                       help="generate exercises/ from solutions/, check they are in sync, strip outputs")
    p.add_argument("action", choices=["build", "strip"],
                   help="build: write exercises/; strip: clear notebook outputs")
    p.add_argument("--check", action="store_true",
                   help="only check exercises/ is in sync and notebooks have no outputs")
    p.set_defaults(func=exercises_main)

    p = sub.add_parser("curriculum",
                       help="run the lessons headless with papermill and write build/summary.md")
    p.add_argument("action", choices=["run"])
    p.add_argument("--scale", default="tiny", choices=["tiny", "small", "full"], help="lesson scale")
    p.add_argument("--out", default="build", help="folder for executed notebooks and summary.md")
    p.add_argument("--folder", default="curriculum", help="folder of lesson notebooks")
    p.add_argument("--only", nargs="*", help="lesson prefixes to run, e.g. 00 02")
    p.add_argument("--timeout", type=float, default=600.0, help="per-cell execution timeout (s)")
    p.set_defaults(func=curriculum_main)

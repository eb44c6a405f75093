"""Every `hepml-kit` option says what it does and shows its default; `--version` answers."""

import argparse
import subprocess
import sys
import textwrap

from hepml_kit.cli import build_parser


def _options(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings and action.dest != "help":
            yield " ".join(path), action, parser


def test_every_option_has_help_and_shows_its_default():
    missing, no_default = [], []
    for where, action, parser in _options(build_parser()):
        if not action.help:
            missing.append(f"{where} {action.option_strings[0]}")
        elif action.default not in (None, False, argparse.SUPPRESS) and where and \
                "default" not in parser.formatter_class(prog="x")._get_help_string(action):
            no_default.append(f"{where} {action.option_strings[0]}")
    assert not missing, f"options without help text: {missing}"
    assert not no_default, f"options whose help hides their default: {no_default}"


def test_version():
    out = subprocess.run([sys.executable, "-m", "hepml_kit.cli", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("hepml-kit ")



def test_building_the_parser_and_asking_for_help_imports_no_torch():
    """Each command sets OMP_WAIT_POLICY=PASSIVE before torch loads (hepml_kit.models.cli), so neither the
    parser nor `--help` of the commands that train may import torch (nor h5py, nbformat: the parser stays
    fast)."""
    code = textwrap.dedent("""
        import sys
        import hepml_kit.cli as cli
        cli.build_parser()
        for argv in (["--help"], ["validate", "--help"], ["models", "--help"], ["data", "generate", "-h"]):
            try:
                cli.main(argv)
            except SystemExit as e:
                assert e.code == 0, (argv, e.code)
        print("LOADED", *sorted(m for m in ("torch", "h5py", "nbformat") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "LOADED", out.stdout.splitlines()[-1]

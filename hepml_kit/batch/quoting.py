"""What may go into a rendered batch script, and how: every value is checked or quoted into ONE shell word.

Two places in a job script read user values. Scheduler directives (``#SBATCH --account=...``,
``#PBS -A ...``) are parsed by sbatch/qsub, not by the shell, and neither has quoting we can rely on, so
their values must match a strict pattern (`directive_value`), or they are refused with the option's name
and what it allows. Shell lines quote values with `shlex.quote`; values meant to name a place in the
user's environment (``--conda-env '$SCRATCH/envs/kit'``) may keep ``$NAME``/``${NAME}`` references, which
then expand, while everything else, ``$(...)`` and backticks included, stays literal (`shell_word`).
"""

from __future__ import annotations

import re
import shlex

__all__ = ["IMAGE", "SAFE_PATH", "BatchError", "check_text", "directive_value", "job_name_from", "shell_word"]


class BatchError(ValueError):
    """Bad batch request (unknown notebook, undeclared parameter, bad resources) or a failed job."""


ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # accounts, QOS, queues, partitions
CONSTRAINT = re.compile(r"^[A-Za-z0-9_.&|,:*()\[\]-]{1,128}$")  # Slurm features: gpu, gpu&hbm80g, [a|b]
JOB_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,255}$")  # registry/name:tag or @sha256:...
SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@=,:~-]+$")  # paths a directive can carry (no space, quote, %)
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

ALLOWED = {
    ACCOUNT: "letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)",
    CONSTRAINT: "letters, digits and the feature operators & | , : * ( ) [ ] (no spaces)",
    JOB_NAME: "letters, digits, '_', '.', '+', '-' (at most 64)",
    IMAGE: "registry/name:tag or name@sha256:... (letters, digits, '_', '.', ':', '/', '@', '+', '-')",
    SAFE_PATH: "letters, digits and _ . / + @ = , : ~ - (no spaces, quotes or %)",
}


def check_text(option: str, value: str) -> str:
    """Refuse values a script cannot carry faithfully: not UTF-8 (surrogate-escaped bytes from the command
    line), NUL, newlines or other control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BatchError(f"{option} {value!r} is not valid UTF-8 text") from None
    bad = sorted({c for c in value if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise BatchError(f"{option} {value!r} contains control characters ({', '.join(map(repr, bad))}): "
                         "newlines, tabs and NUL cannot go into a job script")
    return value


def directive_value(option: str, value: str, pattern: re.Pattern = ACCOUNT) -> str:
    """`value` if it matches `pattern`, else a `BatchError` naming `option` and what it allows."""
    check_text(option, str(value))
    if not pattern.match(str(value)):
        raise BatchError(f"{option} {value!r} is not allowed here: use {ALLOWED[pattern]}")
    return str(value)


def shell_word(value: str, expand_variables: bool = False) -> str:
    """`value` as exactly one shell word. With `expand_variables`, ``$NAME`` and ``${NAME}`` expand (as
    ``"${NAME}"``, so even a value with spaces stays one word); nothing else is ever interpreted."""
    if not expand_variables:
        return shlex.quote(value)
    parts, pos = [], 0
    for m in _VAR.finditer(value):
        if m.start() > pos:
            parts.append(shlex.quote(value[pos:m.start()]))
        parts.append(f'"${{{m.group(1) or m.group(2)}}}"')
        pos = m.end()
    if pos < len(value) or not parts:
        parts.append(shlex.quote(value[pos:]))
    return "".join(parts)


def job_name_from(stem: str) -> str:
    """A scheduler-safe job name from a notebook's file name (spaces, ';' and the like become '_')."""
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"hepml-{stem}")[:64]
    return name

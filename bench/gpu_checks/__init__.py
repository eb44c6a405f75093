"""The GPU checks, one file per area of the kit; `bench/gpu_check.py` runs them and writes the table.

Each area module holds ``CHECKS``, a list of `common.Check` (name, function, time budget). A check function
takes a `common.Context` (or nothing) and returns one row's values, a dict, or a list of them (one row each).
The row schema is `common.ROW_KEYS`: ``status`` is ``"ok"``, ``"FAILED"`` or ``"below goal"`` (``ok: False``
also means FAILED); keys starting ``result_`` go on the final ``RESULT`` line; every other key is a value
shown in the table. A check needing a process group uses `common.one_rank_group()`.
"""

AREAS = ("env", "profile", "serve", "launch", "models", "parallel", "hpo")  # the order the checks run in

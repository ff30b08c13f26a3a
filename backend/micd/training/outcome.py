"""How a training run ends, as other programs see it: exit codes (micd.contract), the exit code of each error kind,
the input problems found before training, a cancellation. Shared by the session, the planner and the trainer
without importing one another."""

from __future__ import annotations

from typing import List, Optional

from micd.contract import EXIT_CANCELLED, EXIT_DATA, EXIT_FAILED, EXIT_OK  # noqa: F401 - the codes, for the wing

# the exit code that goes with each error kind (an error event carries it, so `--nproc` can return the ranks' code)
KIND_EXIT = {"data": EXIT_DATA, "budget": EXIT_DATA, "cancelled": EXIT_CANCELLED}
MAX_OOM_RETRIES = 3  # CUDA out-of-memory retries, each with a smaller patch or batch


class DataProblem(Exception):
    """Input problems found before training; `problems` is a list of {"file", "reason"}; `kind` the error event's
    kind ("data", or "budget" when the time budget cannot hold the shortest run)."""

    def __init__(self, message: str, problems: Optional[List[dict]] = None, hint: str = "", kind: str = "data"):
        super().__init__(message)
        self.problems = problems or []
        self.hint = hint
        self.kind = kind


class Cancelled(Exception):
    pass

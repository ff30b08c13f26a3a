"""How a training run ends, as other programs see it: exit codes, the exit code of each error kind, the input
problems found before training, a cancellation; and the run folder's config file. Shared by the trainer, the time
budget and the command without importing one another."""

from __future__ import annotations

from typing import List, Optional

EXIT_OK, EXIT_FAILED, EXIT_DATA, EXIT_CANCELLED = 0, 1, 2, 3
# the exit code that goes with each error kind (an error event carries it, so `--nproc` can return the ranks' code)
KIND_EXIT = {"data": EXIT_DATA, "budget": EXIT_DATA, "cancelled": EXIT_CANCELLED}
CONFIG_FILE = "config.json"  # RUN_DIR/config.json: the run's resolved options (what --resume continues with)
MAX_OOM_RETRIES = 3  # CUDA out-of-memory retries, each with a smaller patch or batch


class DataProblem(Exception):
    """Input problems found before training; `problems` is a list of {"file", "reason"}."""

    def __init__(self, message: str, problems: Optional[List[dict]] = None, hint: str = ""):
        super().__init__(message)
        self.problems = problems or []
        self.hint = hint


class Cancelled(Exception):
    pass

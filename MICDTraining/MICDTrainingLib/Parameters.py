"""Training settings: defaults, validation with reasons, and their `micd train` command-line form.

The methods, devices, option defaults and the duration parser are the backend's (MICDCommon.contract, read from the
shipped backend's micd/contract.py), so the panel offers what `micd train` accepts and starts from its defaults."""

import dataclasses
import re
from dataclasses import dataclass, field

from MICDCommon.contract import DEVICES, METHODS, TRAIN_DEFAULTS, parse_duration

METHOD_TITLES = {
    "micd": "MICD (masked consistency + discrepancy co-training)",
    "supervised": "Supervised only (ignores unlabeled data)",
    "mean-teacher": "Mean teacher",
    "cps": "Cross pseudo supervision",
    "dhc": "DHC (class-balanced co-training)",
}

# Advanced options offered in the panel: option name (as on the command line) -> (type, default, help); the
# defaults are `micd train`'s own
ADVANCED_OPTIONS = {name: (type(TRAIN_DEFAULTS[name]), TRAIN_DEFAULTS[name], help_text) for name, help_text in (
    ("lr", "initial learning rate"),
    ("beta-max", "weight of the unlabeled-data terms after ramp-up"),
    ("mask-ratio", "share of masked blocks in the masked-consistency term"),
    ("val-fraction", "share of labeled cases held out for validation"),
    ("batch-labeled", "labeled patches per step"),
    ("batch-unlabeled", "unlabeled patches per step"),
)}

DEFAULT_TIME_BUDGET = "30m"  # the panel's; `micd train` without --time-budget runs a fixed iteration count
OLD_DEFAULT_ITERATIONS = 6000  # what panels before the time budget stored without the user choosing it
# `micd train --log-every`: without it the backend writes one `iteration` event per step, and a long run's
# events.jsonl grows to tens of thousands of lines that every re-entry replays. With an iteration count the panel asks
# for about LOGGED_ITERATIONS events (20,000 iterations: every 20th); with a time budget only, the count is planned
# by the backend after the panel built the command, so a fixed LOG_EVERY_WITH_BUDGET (a 2 h budget at 0.1 s per
# step: 7,200 events). The backend always logs the first and the last iteration; the charts keep at most
# Curves.MAX_POINTS points per series whatever the stream holds.
LOGGED_ITERATIONS = 1000
LOG_EVERY_WITH_BUDGET = 10


def log_every(iterations):
    """The `--log-every` for a run of `iterations` (None: planned from the time budget)."""
    if iterations is None:
        return LOG_EVERY_WITH_BUDGET
    return max(1, int(iterations) // LOGGED_ITERATIONS)


def _sentence(text):
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


@dataclass
class TrainingSettings:
    """What the panel's Settings section holds. `patch_size` None lets the backend plan it from data and memory.

    The time budget is the main setting: `micd train --time-budget` times a few real steps and fixes the iteration
    count to end within it. `iterations` (None: planned from the budget) wins when given; the budget then only
    yields the expected end."""

    model_name: str = "MyModel"
    time_budget: str = DEFAULT_TIME_BUDGET
    iterations: object = None  # None: planned from the time budget
    patch_size: object = None  # None or (D, H, W), multiples of 16
    device: str = TRAIN_DEFAULTS["device"]
    method: str = TRAIN_DEFAULTS["method"]
    filters: int = TRAIN_DEFAULTS["filters"]
    seed: int = TRAIN_DEFAULTS["seed"]
    checkpoint_every: int = TRAIN_DEFAULTS["checkpoint-every"]
    advanced: dict = field(default_factory=dict)  # ADVANCED_OPTIONS name -> value
    threads: object = None  # CPU threads for the job (None: backend default)

    def problems(self):
        """Reasons the settings cannot be used (empty when fine)."""
        found = []
        if not str(self.model_name).strip():
            found.append("Give the model a name.")
        if self.iterations is not None and int(self.iterations) < 1:
            found.append("Iterations must be at least 1.")
        if str(self.time_budget or "").strip():
            try:
                parse_duration(self.time_budget)
            except ValueError as e:
                found.append(_sentence(str(e)))
        elif self.iterations is None:
            found.append("Give a time budget (e.g. 45m or 2h) or, under Advanced, an iteration count.")
        if self.patch_size is not None:
            size = list(self.patch_size)
            if len(size) != 3 or any(int(s) < 16 or int(s) % 16 for s in size):
                found.append("Patch size must be three multiples of 16 (D H W), or empty for automatic.")
        if self.method not in METHODS:
            found.append(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if str(self.device) not in DEVICES and not re.fullmatch(r"cuda:\d+", str(self.device)):
            found.append(f"Device {self.device!r} must be {', '.join(DEVICES)} or cuda:N.")
        if int(self.filters) < 1 or int(self.checkpoint_every) < 1:
            found.append("Filters and checkpoint interval must be positive.")
        for name in self.advanced:
            if name not in ADVANCED_OPTIONS:
                found.append(f"Unknown advanced option {name!r}.")
        return found

    def cli_args(self):
        """The `micd train` options for these settings (without --dataset/--out)."""
        args = ["--method", self.method]
        if self.iterations is not None:
            args += ["--iterations", int(self.iterations)]
        if str(self.time_budget or "").strip():
            args += ["--time-budget", str(self.time_budget).strip().replace(" ", "")]
        args += ["--filters", int(self.filters), "--device", self.device, "--seed", int(self.seed),
                 "--checkpoint-every", int(self.checkpoint_every), "--log-every", log_every(self.iterations)]
        if self.patch_size is not None:
            args += ["--patch-size", *[int(s) for s in self.patch_size]]
        if self.threads:
            args += ["--num-threads", int(self.threads)]
        for name, value in sorted(self.advanced.items()):
            kind = ADVANCED_OPTIONS[name][0]
            args += [f"--{name}", kind(value)]
        return [str(a) for a in args]

    def plan_preview(self):
        """What the run will do, before it starts (the `start` event then gives the measured plan)."""
        budget = str(self.time_budget or "").strip()
        if self.iterations is not None:
            return (f"Plan: {int(self.iterations)} iterations (set under Advanced)" +
                    (f"; the {budget} budget gives the expected end when it starts." if budget else "."))
        return (f"Plan: a few timed steps at the start fix the iteration count to end within {budget} "
                "(validation and export included).")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in known}
        if "time_budget" not in values and values.get("iterations") == OLD_DEFAULT_ITERATIONS:
            del values["iterations"]  # stored before the time budget existed: the old default, not a choice
        if values.get("patch_size") is not None:
            values["patch_size"] = tuple(int(s) for s in values["patch_size"])
        return cls(**values)

    def updated(self, **changes):
        """A copy with some fields changed; unknown names raise TypeError (typos in console calls)."""
        return dataclasses.replace(self, **changes)

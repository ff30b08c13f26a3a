"""What the backend and the Slicer modules agree on, written once.

The Slicer side runs the backend in another process and reads what it leaves behind (the event stream, the run
folder, the model folder, the exit code); it sets the stop file and the options. Every name and number both sides
must share lives here. This module is loaded by the backend as `micd.contract` and by MICDCommon from the shipped
backend's file (MICDCommon/MICDCommon/contract.py), so it imports only the standard library and runs on Python 3.9
(Slicer 5.8). Changing a value here changes both sides at once; removing or renaming one bumps a schema version.
"""

import re

# ---------------------------------------------------------------- the run folder (micd train --out RUN_DIR)
EVENTS_FILE = "events.jsonl"  # the event stream, appended line by line
CONFIG_FILE = "config.json"  # the resolved options the run was started with (what --resume continues with)
PLAN_FILE = "plan.json"  # the frozen training plan (patch, strides, threads, precision, iterations, cadences, ETA)
LOCK_FILE = "train.lock"  # held (flock / LockFileEx) by the one trainer of the folder while it runs
LOCK_PID_WIDTH = 20  # the lock file starts with the holder's pid, left-justified in this many bytes
LOCK_OFFSET = 1024  # Windows: the byte locked with msvcrt.locking, past the pid text that others read
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"  # in CHECKPOINTS_DIR: what --resume continues from (a run that has one is resumable)
MODEL_DIR = "model"  # the exported model, once the run has succeeded
JOB_FILE = "job.json"  # the Slicer side's record of a background job (pid, command, status)
JOB_LOG_FILE = "job.log"  # the job's stdout and stderr
STOP_FILE = "stop"  # created by a parent that asks for a polite stop (Slicer on Windows has no console signals)
STOP_FILE_VARIABLE = "MICD_STOP_FILE"  # environment variable naming that file's path

# ---------------------------------------------------------------- exit codes of micd train / predict / suggest
EXIT_OK, EXIT_FAILED, EXIT_DATA, EXIT_CANCELLED = 0, 1, 2, 3

# ---------------------------------------------------------------- the event stream (micd.events documents the fields)
EVENT_SCHEMA_VERSION = 1
EVENT_KINDS = ("start", "warning", "iteration", "validation", "checkpoint", "retry", "done", "error")
ERROR_KINDS = ("data", "oom", "cuda", "cancelled", "internal", "budget", "disk")

# ---------------------------------------------------------------- the model folder (micd.model_package documents it)
MODEL_FORMAT = "micd-model"
MODEL_SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"
MODEL_REQUIRED_FIELDS = ("labels", "network", "branches", "preprocessing", "patch_size")  # of model.json


def model_json_problem(meta):
    """Why a model.json's content cannot be read by this version (its format, schema version or a required field
    missing), in words; None when it can. Both micd.model_package and the Slicer registry refuse with this."""
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        return f'not a MICD model description ("format" is not "{MODEL_FORMAT}")'
    if meta.get("schema_version") != MODEL_SCHEMA_VERSION:
        return (f"schema version {meta.get('schema_version')!r} is not supported (this MICD reads version "
                f"{MODEL_SCHEMA_VERSION}); update MICD or re-export the model")
    missing = [k for k in MODEL_REQUIRED_FIELDS if k not in meta]
    return f"required field {missing[0]!r} is missing" if missing else None

# ---------------------------------------------------------------- options of `micd train` that the panel sets
METHODS = ("micd", "supervised", "mean-teacher", "cps", "dhc")
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
# Defaults of the options the training panel offers (command-line names); micd.training.options takes its defaults
# for these from here, the panel its initial values.
TRAIN_DEFAULTS = {
    "method": "micd",
    "iterations": 6000,
    "filters": 16,
    "device": "auto",
    "seed": 0,
    "lr": 0.03,
    "beta-max": 0.1,
    "mask-ratio": 0.5,
    "val-fraction": 0.2,
    "batch-labeled": 2,
    "batch-unlabeled": 2,
    "checkpoint-every": 500,
}

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text) -> float:
    """Seconds in '90s', '45m', '2h', '1h30m', '1.5h', '30 min' or a plain number of seconds (what --time-budget
    accepts); ValueError with the accepted forms otherwise."""
    s = str(text).strip().lower().replace(" ", "")
    m = _DURATION.match(s)
    if not s or not m or not any(m.groupdict().values()):
        raise ValueError(f"time budget {text!r}: expected a duration such as 90s, 45m, 2h or 1h30m")
    seconds = sum(float(m.group(k) or 0) * f for k, f in (("h", 3600), ("m", 60), ("s", 1)))
    if seconds <= 0:
        raise ValueError(f"time budget {text!r}: the budget must be longer than zero")
    return seconds

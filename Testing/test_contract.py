"""One contract between the backend and the Slicer side: MICDCommon.contract is the backend's micd/contract.py (read
from the shipped backend, not a copy), the Slicer side takes its file names, exit codes, model format, methods,
option defaults and duration parser from there, and defines or spells none of them again."""

import ast
import os
import pathlib
import types

import pytest

import micd.contract as backend_contract
from MICDCommon import contract, jobs, registry, runlock
from MICDTrainingLib import Parameters
from MICDTrainingLib.Parameters import ADVANCED_OPTIONS, TrainingSettings

ROOT = pathlib.Path(__file__).resolve().parents[1]
SLICER_SIDE = ["MICDCommon", "MICDTraining", "MICDSegmentation", "Testing"]
PUBLIC = sorted(k for k, v in vars(backend_contract).items()
                if not k.startswith("_") and not isinstance(v, types.ModuleType))
# the names of files and variables both sides use: spelled only in micd/contract.py
SPELLED_ONCE = ["EVENTS_FILE", "CONFIG_FILE", "PLAN_FILE", "LOCK_FILE", "LAST_CHECKPOINT", "JOB_FILE", "JOB_LOG_FILE",
                "STOP_FILE", "STOP_FILE_VARIABLE", "MODEL_FORMAT", "MODEL_JSON", "WEIGHTS_FILE"]


def test_the_slicer_sides_contract_is_the_backends_file():
    assert os.path.samefile(contract._contract.__file__, backend_contract.__file__)
    for name in PUBLIC:
        ours, theirs = getattr(contract, name), getattr(backend_contract, name)
        if callable(theirs):
            assert ours.__code__.co_code == theirs.__code__.co_code, name
            assert os.path.samefile(ours.__code__.co_filename, theirs.__code__.co_filename), name
        else:
            assert ours == theirs, name


def test_the_slicer_side_uses_the_contracts_objects():
    assert Parameters.parse_duration is contract.parse_duration and Parameters.METHODS is contract.METHODS
    assert (jobs.JOB_FILE, jobs.JOB_LOG_FILE, jobs.STOP_FILE, jobs.STOP_FILE_VARIABLE, jobs.EXIT_CANCELLED) == \
        (contract.JOB_FILE, contract.JOB_LOG_FILE, contract.STOP_FILE, contract.STOP_FILE_VARIABLE,
         contract.EXIT_CANCELLED)
    assert jobs.STOP_FILE is contract.STOP_FILE and jobs.JOB_FILE is contract.JOB_FILE
    assert registry.MODEL_JSON is contract.MODEL_JSON and registry.MODEL_FORMAT is contract.MODEL_FORMAT
    assert runlock.LOCK_FILE is contract.LOCK_FILE and runlock.LOCK_OFFSET is contract.LOCK_OFFSET
    defaults = TrainingSettings()
    for option, field_name in (("method", "method"), ("device", "device"), ("filters", "filters"),
                               ("seed", "seed"), ("checkpoint-every", "checkpoint_every")):
        assert getattr(defaults, field_name) == contract.TRAIN_DEFAULTS[option], option
    for option, (kind, default, _help) in ADVANCED_OPTIONS.items():
        assert default == contract.TRAIN_DEFAULTS[option] and kind is type(default), option
    assert defaults.cli_args()[:2] == ["--method", contract.TRAIN_DEFAULTS["method"]] and not defaults.problems()


def test_durations_are_read_as_micd_train_reads_them():
    for text, seconds in (("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                          ("30 min", 1800), ("600", 600), ("2h 15m", 8100)):
        assert contract.parse_duration(text) == seconds, text
    for text in ("soon", "", "0m", "-5m", "1d"):
        with pytest.raises(ValueError, match="time budget"):
            contract.parse_duration(text)
    assert TrainingSettings(time_budget="soon").problems() == [
        "Time budget 'soon': expected a duration such as 90s, 45m, 2h or 1h30m."]


def _slicer_side_files():
    for folder in SLICER_SIDE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name != "contract.py" and "__pycache__" not in path.parts:
                yield path


def test_no_second_copy_of_the_contract_on_the_slicer_side():
    """No module of the Slicer side (nor its tests) defines a name of the contract or spells one of its file names:
    they import them from MICDCommon.contract."""
    spelled = {getattr(backend_contract, name): name for name in SPELLED_ONCE}
    defined, literals = [], []
    for path in _slicer_side_files():
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in PUBLIC:
                defined.append(f"{where}:{node.lineno} {node.name}")
            elif isinstance(node, ast.Assign):
                defined += [f"{where}:{node.lineno} {t.id}" for t in node.targets
                            if isinstance(t, ast.Name) and t.id in PUBLIC]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in spelled:
                literals.append(f"{where}:{node.lineno} {node.value!r} (contract.{spelled[node.value]})")
    assert not defined, "defined again outside micd/contract.py: " + ", ".join(defined)
    assert not literals, "spelled again outside micd/contract.py: " + ", ".join(literals)

"""Shared by the MICDTraining and MICDSegmentation modules: the background job runner (`jobs`), the backend launcher
(`backend`), the dependency check/install (`dependencies`), the model registry (`registry`), the progress stream
(`events`), scene/file helpers (`sceneio`) and the contract with the backend (`contract`: the backend's own
micd/contract.py). Imports only slicer, vtk, numpy and the standard library; `qtsupport`
(job poller, settings, dialogs, panel parts) and `slicermodule` (what both module files share) import qt and ctk
when used."""

from .backend import BackendLauncher, find_backend_path, micd_home, slicer_python
from .events import EventTail, PredictionProgress, TrainingProgress, describe_event, format_seconds
from .jobs import (CANCELLED, CANCELLING, FAILED, FINISHED_STATES, LOST, RUNNING, SUCCEEDED, BackgroundJob,
                   JobError, JobRecord, find_jobs)
from .registry import ModelInfo, ModelRegistry, RegistryError

__all__ = ["BackendLauncher", "find_backend_path", "micd_home", "slicer_python", "EventTail", "PredictionProgress", "TrainingProgress",
           "describe_event", "format_seconds", "CANCELLED", "CANCELLING", "FAILED", "FINISHED_STATES", "LOST",
           "RUNNING", "SUCCEEDED", "BackgroundJob", "JobError", "JobRecord", "find_jobs", "ModelInfo",
           "ModelRegistry", "RegistryError"]

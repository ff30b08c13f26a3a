"""Segmenting a volume without the GUI: write it to a file, have the warm backend worker (`micd serve`, one process
kept between clicks: MICDCommon/worker.py) predict it, import the label map as a segmentation node (names, colours,
geometry, study), optionally the uncertainty map. Also the model list operations the panel offers (rename, delete,
export, import)."""

import os
import shutil
import tempfile
import time

from MICDCommon import (CANCELLED, FAILED, SUCCEEDED, BackendLauncher, ModelRegistry, PredictionProgress, micd_home,
                        volumefile)
from MICDCommon.jobs import JobWrapper, failure_message, log_excerpt
from MICDCommon.worker import DEFAULT_IDLE_TIMEOUT_S, BackendWorker

from .Parameters import SegmentationSettings
from .ResultImport import find_previous_result, import_label_file, import_uncertainty, result_name


class SegmentationError(Exception):
    """Segmentation could not start or failed; the message says why and what to do."""


class SegmentationJob(JobWrapper):
    """A prediction running in the worker and, once it succeeded, the imported result (`segmentation`,
    `uncertainty`); `progress` follows predict's `progress` events (windows done / total, ETA)."""

    cancel_grace_s = 5.0  # prediction keeps nothing worth waiting for

    def __init__(self, job, volume, model, target, want_uncertainty, keep_files, on_log=None, on_finished=None,
                 on_event=None):
        super().__init__(job, PredictionProgress(), on_event, on_log, on_finished)
        self.volume = volume
        self.model = model
        self.target = target
        self.want_uncertainty = want_uncertainty
        self.keep_files = keep_files
        self.segmentation = None
        self.uncertainty = None
        self.started = time.time()

    @property
    def output_path(self):
        return os.path.join(self.job.run_dir, "prediction.nrrd")

    @property
    def uncertainty_path(self):
        return os.path.join(self.job.run_dir, "uncertainty.nrrd")

    @property
    def elapsed_s(self):
        return time.time() - self.started

    def conclude(self, job):
        try:
            if job.state in (SUCCEEDED, CANCELLED) and not _in_scene(self.volume):
                job.state = CANCELLED  # the panel cancels it when it sees the deletion; the result has no place
                self.message = (f"Segmentation cancelled: the volume '{self.volume.GetName()}' was deleted from the "
                                "scene (or the scene was closed); nothing was imported.")
            elif job.state == SUCCEEDED and os.path.isfile(self.output_path):
                self._import()
            elif job.state == SUCCEEDED:
                job.state = FAILED  # conclude runs before the job record is saved: it says failed too
                self.message = f"micd predict ended without writing {self.output_path}." + log_excerpt(job)
            elif job.state == CANCELLED:
                self.message = "Segmentation cancelled."
            else:
                self.message = failure_message(job, "micd predict")
        except Exception as e:  # noqa: BLE001 - reported to the panel / console
            job.state = FAILED
            self.message = f"Could not load the result: {e}"

    def clean_up(self, job):
        if not self.keep_files and job.state in (SUCCEEDED, CANCELLED):
            shutil.rmtree(job.run_dir, ignore_errors=True)

    def _import(self):
        target = self.target if _in_scene(self.target) else None  # an earlier result deleted meanwhile: a new node
        self.segmentation = import_label_file(self.output_path, self.volume, self.model.labels, self.model.colors,
                                              node_name=result_name(self.volume), target=target,
                                              model_path=self.model.path)
        if self.want_uncertainty and os.path.isfile(self.uncertainty_path):
            self.uncertainty = import_uncertainty(self.uncertainty_path, self.volume)
        self.message = (f"Segmented {self.volume.GetName()} with '{self.model.name}' in {self.elapsed_s:.0f} s: "
                        f"{self.segmentation.GetSegmentation().GetNumberOfSegments()} segments.")


def _in_scene(node):
    """Is the node still in a scene (not deleted, its scene not closed)?"""
    return node is not None and node.GetScene() is not None


class SegmentationLogic:
    """Console and panel entry point for segmentation and for managing models.

    launcher/registry/work_root/job_poller as in the training logic; keep_files keeps the temporary folder;
    worker: the `micd serve` process that predicts (default: one started with the launcher's Python on first use,
    or by `warm_up()`; shut down after `idle_timeout_s` without a request, or by `shutdown_worker()`)."""

    def __init__(self, launcher=None, registry=None, work_root=None, job_poller=None, keep_files=False,
                 worker=None, idle_timeout_s=DEFAULT_IDLE_TIMEOUT_S):
        home = micd_home()
        self.launcher = launcher or BackendLauncher()
        self.registry = registry or ModelRegistry(os.path.join(home, "models"), launcher=self.launcher)
        self.work_root = work_root or os.path.join(home, "segment")
        self.job_poller = job_poller
        self.keep_files = keep_files
        self.worker = worker or BackendWorker(self.launcher, idle_timeout_s)

    # --- the worker ---------------------------------------------------------------------------------------------
    def warm_up(self):
        """Start the worker now (returns at once), so that the first Segment does not wait for Python and torch to
        load."""
        self.worker.start()

    def shutdown_worker(self):
        """End the worker and give its memory back (returns at once); the next Segment starts a new one."""
        self.worker.shutdown()

    # --- models -------------------------------------------------------------------------------------------------
    def models(self):
        return self.registry.models()

    def model(self, model):
        """A ModelInfo from a ModelInfo, a display/folder name, or a model folder path."""
        return self.registry.get(model)

    def rename_model(self, model, new_name):
        return self.registry.rename(model, new_name)

    def delete_model(self, model):
        self.registry.delete(model)

    def export_model(self, model, zip_path, overwrite=False):
        return self.registry.export_zip(model, zip_path, overwrite)

    def import_model(self, path, name=None):
        return self.registry.import_path(path, name)

    def start_import(self, path, on_finished, name=None):
        """`import_model` off the main thread (the copy and the backend's check of the model take seconds):
        returns a ThreadJob polled by the job poller; `on_finished(job)` gets `job.result` (the ModelInfo) or
        `job.error`."""
        from MICDCommon.threadjob import ThreadJob

        job = ThreadJob(lambda: self.registry.import_path(path, name), on_finished=on_finished, name="MICD import")
        if self.job_poller is not None:
            self.job_poller.add(job)
        return job

    # --- segmentation -------------------------------------------------------------------------------------------
    @staticmethod
    def previous_result(volume):
        return find_previous_result(volume)

    def segment(self, volume, model, wait=False, settings=None, replace=False, on_log=None, on_finished=None,
                on_event=None, timeout=None, **setting_changes):
        """Segment `volume` with `model` (ModelInfo, name or folder) in the background; returns a SegmentationJob.

        replace: True reuses the earlier MICD result node of this volume (its segments are replaced), False makes a
        new node; the panel asks the user first. Options: device="cpu", uncertainty=True, tta=True. With wait=True
        the call returns when done and raises SegmentationError unless it succeeded (job.segmentation is the node)."""
        settings = settings or SegmentationSettings()
        if setting_changes:
            settings = SegmentationSettings(**{**settings.__dict__, **setting_changes})
        if settings.problems():
            raise SegmentationError(" ".join(settings.problems()))
        if volume is None or volume.GetImageData() is None:
            raise SegmentationError("Select a volume with image data to segment.")
        if not _in_scene(volume):
            raise SegmentationError(f"The volume '{volume.GetName()}' was deleted from the scene; select another "
                                    "volume.")
        try:
            snapshot = volumefile.VolumeSnapshot.take(volume)  # the voxels as they are now, shared (no copy)
        except ValueError as e:
            raise SegmentationError(f"Cannot segment this volume: {e}.") from None
        model = self.model(model)
        target = self.previous_result(volume) if replace else None
        os.makedirs(self.work_root, exist_ok=True)
        work_dir = tempfile.mkdtemp(prefix="segment-", dir=self.work_root)
        input_path = os.path.join(work_dir, "input.nrrd")  # written in a thread while the worker gets ready
        output_path = os.path.join(work_dir, "prediction.nrrd")
        fields = dict(model=model.path, input=input_path, output=output_path, **settings.request_fields())
        if settings.uncertainty:
            fields["uncertainty"] = os.path.join(work_dir, "uncertainty.nrrd")
        job = self.worker.submit("predict", run_dir=work_dir,
                                 before=lambda: volumefile.write_snapshot(snapshot, input_path), **fields)
        segmentation_job = SegmentationJob(job, volume, model, target, settings.uncertainty, self.keep_files,
                                           on_log, on_finished, on_event)
        if wait:
            segmentation_job.wait(timeout=timeout)
            if not segmentation_job.finished:
                segmentation_job.cancel()
                raise SegmentationError(f"Segmentation did not finish within {timeout} s and was stopped.")
            if segmentation_job.state != SUCCEEDED:
                raise SegmentationError(segmentation_job.message)
        elif self.job_poller is not None:
            self.job_poller.add(segmentation_job)
        return segmentation_job

    def import_result(self, label_path, volume, model, replace=False, uncertainty_path=None):
        """Import a label file made by `micd predict` elsewhere (same geometry as `volume`)."""
        model = self.model(model)
        node = import_label_file(label_path, volume, model.labels, model.colors, node_name=result_name(volume),
                                 target=self.previous_result(volume) if replace else None, model_path=model.path)
        if uncertainty_path:
            import_uncertainty(uncertainty_path, volume)
        return node

"""The annotation loop's first half: `micd suggest` ranks the unlabeled volumes by how unsure a model is about them
(in a background job, with its progress), and a chosen volume is loaded with its prediction as an editable
segmentation, so that correcting it is the annotation (the import is the segment panel's, `MICDCommon.resultimport`).

Talks to the backend only through its command line, its progress lines and its `--json` ranking."""

import json
import os

from MICDCommon import CANCELLED, FAILED, SUCCEEDED, PredictionProgress, describe_event, sceneio
from MICDCommon.jobs import JobWrapper, failure_message, log_excerpt
from MICDCommon.resultimport import find_previous_result, import_label_file, result_name

RANKING_FILE = "suggest.json"
PREDICTIONS_FOLDER = "predictions"
KEEP_RUNS = 5  # earlier suggestion folders kept (their predictions may still be loaded)


class SuggestionError(Exception):
    """A suggestion could not be made or loaded; the message says why and what to do."""


class SuggestJob(JobWrapper):
    """A running `micd suggest` and, once it succeeded, `ranking`: its entries (rank, file, case, score,
    disagreement, entropy, least_certain_label, labels, prediction), most uncertain first."""

    cancel_grace_s = 5.0  # ranking keeps nothing worth waiting for

    def __init__(self, job, model, on_event=None, on_log=None, on_finished=None):
        super().__init__(job, PredictionProgress(), on_event, on_log, on_finished)
        self.model = model
        self.ranking = []
        self.failed = []

    @property
    def ranking_path(self):
        return os.path.join(self.run_dir, RANKING_FILE)

    def describe(self, event):
        return describe_event(event) if event.get("event") != "done" else None  # the ranking message says it

    def conclude(self, job):
        if job.state == SUCCEEDED:
            try:
                with open(self.ranking_path, encoding="utf-8") as f:
                    result = json.load(f)
                self.ranking, self.failed = list(result["ranking"]), list(result.get("failed") or [])
            except (OSError, ValueError, KeyError, TypeError) as e:
                job.state = FAILED
                self.message = f"micd suggest ended without a readable ranking ({e})." + log_excerpt(job)
            else:
                self.message = _ranked_message(self.ranking, self.failed)
        elif job.state == CANCELLED:
            self.message = "Ranking cancelled."
        else:
            self.message = failure_message(job, "micd suggest")


def _ranked_message(ranking, failed):
    if not ranking:
        text = "No volume could be ranked."
    else:
        text = (f"Ranked {len(ranking)} volume(s); label {ranking[0]['case']} first (score "
                f"{ranking[0]['score']:.3f}, higher = less certain).")
    if failed:
        text += f" {len(failed)} could not be read: " + ", ".join(os.path.basename(p) for p in failed[:5])
    return text


def suggestion_command(launcher, model, inputs, run_dir, top=None, device="auto"):
    """The `micd suggest` command: ranking to RUN_DIR/suggest.json, each volume's prediction in RUN_DIR/predictions."""
    args = ["--model", model.path, "--input", *[os.path.abspath(p) for p in inputs],
            "--json", os.path.join(run_dir, RANKING_FILE), "--predictions", os.path.join(run_dir, PREDICTIONS_FOLDER),
            "--device", device]
    if top:
        args += ["--top", int(top)]
    return launcher.command("suggest", *args)


def prune_runs(root, keep=KEEP_RUNS):
    """Remove all but the newest `keep` finished suggestion folders under `root`."""
    import shutil

    from MICDCommon import find_jobs

    finished = [r for r in find_jobs(root, "suggest") if r.status != "running" and not r.process_running()]
    for record in finished[keep:]:
        shutil.rmtree(record.run_dir, ignore_errors=True)


def _loaded_volume(scene, path):
    """A scalar volume already loaded from `path`, or None."""
    path = os.path.abspath(path)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        storage = node.GetStorageNode()
        if node.IsA("vtkMRMLLabelMapVolumeNode") or storage is None or not storage.GetFileName():
            continue
        if os.path.abspath(storage.GetFileName()) == path:
            return node
    return None


def load_suggestion(scene, entry, model):
    """Load a ranked volume and its prediction as an editable segmentation: (volume, segmentation, reused).

    A volume already in the scene is reused, and so is a MICD result this model already made for it (it may hold the
    user's corrections: it is never overwritten). A result by another model is kept too; this model's prediction
    then goes into a new node named after the model. The prediction is `micd suggest --predictions`' file."""
    path = entry.get("file") or ""
    if os.path.isdir(path):
        raise SuggestionError(f"{path} is a DICOM series: import it with the DICOM module, then segment it in MICD "
                              "Segmentation to correct the result.")
    if not os.path.isfile(path):
        raise SuggestionError(f"{path} is not there any more.")
    volume = _loaded_volume(scene, path)
    other = None
    if volume is not None:
        previous = find_previous_result(volume, model.path)
        if previous is not None:
            return volume, previous, True
        other = find_previous_result(volume)
    prediction = entry.get("prediction")
    if not prediction or not os.path.isfile(prediction):
        raise SuggestionError(f"The prediction of {entry.get('case', path)} is missing ({prediction}); rank again.")
    if volume is None:
        volume = sceneio.load_volume(path, entry.get("case") or sceneio.safe_file_stem(os.path.basename(path)))
    name = result_name(volume) if other is None else f"{result_name(volume)} ({model.name})"
    segmentation = import_label_file(prediction, volume, model.labels, model.colors, node_name=name,
                                     model_path=model.path)
    return volume, segmentation, False

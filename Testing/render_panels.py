"""Render both panels, built by the module files through the test harness (real Qt widgets, offscreen), to
OUT_DIR/MICDTraining.png and OUT_DIR/MICDSegmentation.png, from a REAL run recorded once in Testing/recorded_run/
(see its README.md: what ran, on which machine), so every number on them agrees with the others:

- training: two labeled hippocampus cases paired from the scene, one unlabeled folder, checked; the recorded MICD run
  replayed into the panel as a run in progress (its events up to REPLAY_UNTIL: plan, progress, curves, log), and the
  recorded `micd suggest` ranking of three unlabeled volumes by that run's model under Next cases;
- segment: that model selected, a volume segmented with it: the recorded `micd predict` events in the log and the
  label map imported by the real logic.

Usage: QT_QPA_PLATFORM=offscreen python Testing/render_panels.py OUT_DIR"""

import json
import math
import os
import pathlib
import random
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PANEL_WIDTH = 470


def shared_data():
    for root in (os.environ.get("SHARED"), HERE.parents[1] / "shared", "/work/shared"):
        if root and (pathlib.Path(root) / "data" / "hippocampus" / "imagesTr").is_dir():
            return pathlib.Path(root) / "data" / "hippocampus"
    raise SystemExit("render_panels: the hippocampus data (shared/data/hippocampus) was not found; set SHARED")


RECORDED = HERE / "recorded_run"
REPLAY_UNTIL = 336  # of the recorded run's 564 iterations: the panel shows it running


def recorded_events(name):
    with open(RECORDED / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_events(run_dir):
    """The recorded training run's events up to iteration REPLAY_UNTIL, as the run folder's events file."""
    from MICDCommon.contract import EVENTS_FILE

    events = [e for e in recorded_events("training-events.jsonl")
              if e["event"] == "start" or (e["event"] != "done" and e.get("iter", 0) <= REPLAY_UNTIL)]
    with open(os.path.join(run_dir, EVENTS_FILE), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)


def running_job(runs_root, name):
    """A run folder whose job record points at this process (alive): the panel finds it and reattaches."""
    from MICDCommon import processes
    from MICDCommon.contract import EVENTS_FILE
    from MICDCommon.jobs import JobRecord

    run_dir = os.path.join(runs_root, f"{name}-20261201-101500")
    os.makedirs(run_dir)
    write_events(run_dir)
    JobRecord("train", ["PythonSlicer", "-m", "micd", "train"], run_dir, pid=os.getpid(),
              start_marker=processes.start_marker(os.getpid()), events_file=os.path.join(run_dir, EVENTS_FILE),
              info={"model_name": name}).save()


def model_folder(models_root, name):
    """A registry folder with the recorded run's model.json (labels, metrics, provenance; weights are not shown on the
    panels, so they are placeholders of the right layout, model_folders.py)."""
    from model_folders import write_model_folder

    from MICDCommon.contract import MODEL_JSON

    with open(RECORDED / MODEL_JSON, encoding="utf-8") as f:
        meta = json.load(f)
    folder = os.path.join(models_root, name)
    os.makedirs(folder)
    write_model_folder(folder, meta["labels"], meta.get("colors"), method=meta["method"], metrics=meta["metrics"],
                       provenance=meta["provenance"])


def grab(loaded, path):
    widget = loaded.widget.parent
    widget.setFixedWidth(PANEL_WIDTH)
    widget.adjustSize()
    widget.resize(PANEL_WIDTH, widget.sizeHint.height())
    loaded.widget.layout.activate()
    if not widget.grab().save(str(path)):
        raise SystemExit(f"render_panels: could not write {path}")
    print(f"wrote {path} ({widget.width} x {widget.height})")


def render_training(out_dir, data, home):
    import slicer
    import slicer_harness
    from scene_helpers import load_case, new_scene

    names = sorted(p.name for p in (data / "imagesTr").iterdir())
    scene, keep = new_scene()
    start = recorded_events("training-events.jsonl")[0]
    segment_names = {int(v): n for v, n in start["labels"].items()}  # as the recorded run named them
    for name in names[:start["labeled"]]:
        load_case(scene, data / "imagesTr" / name, data / "labelsTr" / name, names=segment_names)
    unlabeled = home / "unlabeled scans"  # as many volumes as the recorded run had
    unlabeled.mkdir()
    for name in names[2:2 + start["unlabeled"]]:
        os.symlink(data / "imagesTr" / name, unlabeled / name)
    running_job(str(home / "runs"), "Hippocampus")

    loaded = slicer_harness.load_module("MICDTraining")
    panel = loaded.widget.panel
    training, form, next_cases = panel.training, panel.training.form, panel.nextCases
    training.autoPairButton.click()
    training.addUnlabeledFolder(str(unlabeled))
    form.modelNameEdit.text = "Hippocampus"
    form.timeBudgetCombo.setEditText(start["time_budget"])
    training.checkButton.click()
    loaded.widget.enter()  # reattaches to the running job, offers the registered model under Next cases
    drawn = training.curvesView.drawn
    training.job.poll()
    deadline = time.monotonic() + 10
    while training.curvesView.drawn == drawn and time.monotonic() < deadline:  # the panel redraws from a timer
        slicer.app.processEvents()
        time.sleep(0.01)
    model = next_cases.selectedLoopModel()
    with open(RECORDED / "suggest-ranking.json", encoding="utf-8") as f:
        ranking = [dict(entry, file=str(unlabeled / (entry["case"] + ".nii.gz"))) for entry in json.load(f)["ranking"]]
    next_cases.showSuggestions(ranking, model)
    next_cases.suggestProgress.setMaximum(1000)
    next_cases.suggestProgress.setValue(1000)
    next_cases.suggestStatus.setText(f"Ranked {len(ranking)} volume(s); label {ranking[0]['case']} first (score "
                                     f"{ranking[0]['score']:.3f}, higher = less certain).")
    slicer.app.processEvents()
    grab(loaded, out_dir / "MICDTraining.png")
    loaded.unload()
    return keep


def render_segmentation(out_dir, data, home):
    import slicer
    import slicer_harness
    from scene_helpers import load_volume, new_scene

    from MICDCommon import describe_event

    scene, keep = new_scene()
    name = sorted(p.name for p in (data / "imagesTr").iterdir())[20]
    volume = load_volume(data / "imagesTr" / name, name.split(".")[0])
    loaded = slicer_harness.load_module("MICDSegmentation")
    panel = loaded.widget.panel
    panel.deviceCombo.currentIndex = panel.deviceCombo.findText("auto")
    events = recorded_events("predict-events.jsonl")  # `micd predict` of this volume with the recorded model
    prediction = next(e for e in events if e["event"] == "prediction")
    loaded.widget.logic.import_result(str(RECORDED / "prediction.nii.gz"), volume, "Hippocampus")  # its output
    for event in events:
        if describe_event(event):
            panel.appendLog(describe_event(event))
    message = (f"Segmented {volume.GetName()} with 'Hippocampus' in {prediction['seconds']:.1f} s: "
               f"{len(prediction['labels_found'])} segments.")
    panel.appendLog(message)
    panel.onFinished(type("FinishedJob", (), {"state": "succeeded", "message": message})())
    slicer.app.processEvents()
    grab(loaded, out_dir / "MICDSegmentation.png")
    loaded.unload()
    return keep


def main(out_dir):
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    home = pathlib.Path(tempfile.mkdtemp(prefix="micd-render-"))
    os.environ["MICD_HOME"] = str(home)
    import slicer_harness

    slicer_harness.install(tempfile.mkdtemp(prefix="micd-render-settings-"))
    from PyQt5 import QtWidgets

    QtWidgets.QApplication.setStyle("Fusion")
    data = shared_data()
    model_folder(str(home / "models"), "Hippocampus")  # offered by both panels
    keep = [render_training(out_dir, data, home), render_segmentation(out_dir, data, home)]
    del keep


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])

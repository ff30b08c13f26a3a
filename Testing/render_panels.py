"""Render both panels, built by the module files through the test harness (real Qt widgets, offscreen), in a
realistic state, to OUT_DIR/MICDTraining.png and OUT_DIR/MICDSegmentation.png:

- training: two labeled hippocampus cases paired from the scene, one unlabeled folder, checked, a run in progress
  that the panel reattached to (its events file is replayed: plan, progress, curves, log), and the unlabeled volumes
  ranked by a registered model under Next cases;
- segment: a registered model selected, a volume segmented with it earlier (the label map imported by the real
  logic) and being segmented again: the progress bar and status from `micd predict`'s progress events.

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


def write_events(run_dir, iterations=3000, done=1240):
    from MICDCommon.contract import CHECKPOINTS_DIR, EVENTS_FILE, LAST_CHECKPOINT

    rng = random.Random(3)
    events = [{"event": "start", "method": "micd", "device": "cuda:0", "labeled": 2, "unlabeled": 3,
               "validation": 0, "iterations": iterations, "start_iter": 0, "precision": "fp16",
               "precision_reason": "fp16 AMP on CUDA", "time_budget": "30m", "time_budget_s": 1800.0,
               "eta_s": iterations * 0.42 + 95, "expected_total_s": iterations * 0.42 + 140,
               "sec_per_iter_expected": 0.42, "budget_plan": {"planned_iterations": True}}]
    for it in range(10, done + 1, 10):
        decay = math.exp(-it / 500)
        sup = 0.25 + 0.9 * decay + rng.uniform(-0.04, 0.04)
        cons = 0.05 + 0.2 * (1 - decay) * math.exp(-it / 2500) + rng.uniform(-0.01, 0.01)
        events.append({"event": "iteration", "iter": it, "total": iterations, "sec_per_iter": 0.42,
                       "eta_s": (iterations - it) * 0.42, "loss": {"total": sup + cons, "sup": sup,
                                                                    "consistency": cons}})
        if it % 200 == 0:
            anterior, posterior = 0.86 - 0.5 * decay, 0.83 - 0.55 * decay
            events.append({"event": "validation", "iter": it, "mean_dice": (anterior + posterior) / 2,
                           "dice": {"anterior": anterior, "posterior": posterior}})
        if it % 500 == 0:
            events.append({"event": "checkpoint", "iter": it, "kind": "last",
                           "path": os.path.join(run_dir, CHECKPOINTS_DIR, LAST_CHECKPOINT)})
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
    """A model folder the registry lists (model_folders.py), with provenance and a validation Dice."""
    from model_folders import write_model_folder

    folder = os.path.join(models_root, name)
    os.makedirs(folder)
    write_model_folder(folder, {"1": "anterior", "2": "posterior"}, {"1": [0.9, 0.35, 0.2], "2": [0.2, 0.6, 0.95]},
                       method="micd", metrics={"best_mean_dice": 0.842},
                       provenance={"created": "2026-11-30T16:42:00+0000", "iterations": 3000,
                                   "counts": {"labeled": 5, "unlabeled": 20, "validation": 2}})


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
    for name in names[:2]:
        load_case(scene, data / "imagesTr" / name, data / "labelsTr" / name)
    unlabeled = home / "unlabeled scans"
    unlabeled.mkdir()
    for name in names[10:13]:
        os.symlink(data / "imagesTr" / name, unlabeled / name)
    running_job(str(home / "runs"), "Hippocampus")

    loaded = slicer_harness.load_module("MICDTraining")
    panel = loaded.widget.panel
    training, form, next_cases = panel.training, panel.training.form, panel.nextCases
    training.autoPairButton.click()
    training.addUnlabeledFolder(str(unlabeled))
    form.modelNameEdit.text = "Hippocampus"
    training.checkButton.click()
    loaded.widget.enter()  # reattaches to the running job, offers the registered model under Next cases
    drawn = training.curvesView.drawn
    training.job.poll()
    deadline = time.monotonic() + 10
    while training.curvesView.drawn == drawn and time.monotonic() < deadline:  # the panel redraws from a timer
        slicer.app.processEvents()
        time.sleep(0.01)
    model = next_cases.selectedLoopModel()
    ranking = [{"rank": i + 1, "case": name.split(".")[0], "file": str(unlabeled / name), "score": score,
                "least_certain_label": label} for i, (name, score, label) in
               enumerate(zip(names[10:13], (0.412, 0.305, 0.198), (2, 1, 2)))]
    next_cases.showSuggestions(ranking, model)
    next_cases.suggestProgress.setMaximum(1000)
    next_cases.suggestProgress.setValue(1000)
    next_cases.suggestStatus.setText(f"Ranked 3 volume(s); label {ranking[0]['case']} first (score 0.412, higher = "
                                "less certain).")
    slicer.app.processEvents()
    grab(loaded, out_dir / "MICDTraining.png")
    loaded.unload()
    return keep


def render_segmentation(out_dir, data, home):
    import slicer
    import slicer_harness
    from scene_helpers import load_volume, new_scene

    from MICDCommon import PredictionProgress, describe_event

    scene, keep = new_scene()
    name = sorted(p.name for p in (data / "imagesTr").iterdir())[20]
    volume = load_volume(data / "imagesTr" / name, name.split(".")[0])
    loaded = slicer_harness.load_module("MICDSegmentation")
    panel = loaded.widget.panel
    panel.deviceCombo.currentIndex = panel.deviceCombo.findText("auto")
    loaded.widget.logic.import_result(str(data / "labelsTr" / name), volume, "Hippocampus")
    for event in ({"event": "plan", "device": "cuda:0", "grid_shape": [1, 1, 1], "roi": [48, 64, 48]},
                  {"event": "prediction", "seconds": 2.8, "labels_found": [1, 2]}):
        panel.appendLog(describe_event(event))
    message = f"Segmented {volume.GetName()} with 'Hippocampus' in 9 s: 2 segments."
    panel.appendLog(message)
    panel.onFinished(type("FinishedJob", (), {"state": "succeeded", "message": message})())
    # a second run in progress, as its events arrive (the job's own progress follows them, as in SegmentationJob)
    panel.uncertaintyCheck.checked = True
    panel.job = type("RunningJob", (), {"finished": False, "state": "running", "progress": PredictionProgress()})()
    panel.updateButtons()
    for event in ({"event": "plan", "device": "cuda:0", "grid_shape": [2, 1, 1], "roi": [48, 64, 48]},
                  {"event": "progress", "image": 1, "images": 1, "windows_done": 312, "windows_total": 480,
                   "fraction": 0.65, "elapsed_s": 76.0, "eta_s": 41.0}):
        panel.job.progress.update(event)
        if describe_event(event):
            panel.appendLog(describe_event(event))
        panel.onEvent(event)
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

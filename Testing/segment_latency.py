"""Click-to-node latency of one-click segmentation, through the test harness with the real backend.

The MICDSegmentation module is loaded as Slicer loads it (its logic with the 50 ms job poller, a QTimer), a
hippocampus volume is in the scene, and Segment is clicked; the time runs until the segmentation node holds the
result, with Qt's event loop spinning as in Slicer. Conditions, `--repeats` clicks each, alternating:
- cold: the worker was shut down before the click (Python, torch, MONAI and the model load first: what every click
  cost before the worker, one process per click, plus the handshake);
- warm: the same model as the click before;
- warm, another model: a model the worker has not loaded yet (a fresh copy each time), on the same volume.
Also `micd predict` as one process on the same file (the command line, no Slicer), for reference.

Prints one JSON object. Usage: QT_QPA_PLATFORM=offscreen python Testing/segment_latency.py [--repeats 3]"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def shared_hippocampus():
    for root in (os.environ.get("SHARED"), HERE.parents[1] / "shared", "/work/shared"):
        if root and (pathlib.Path(root) / "data" / "hippocampus" / "imagesTr").is_dir():
            return pathlib.Path(root) / "data" / "hippocampus"
    raise SystemExit("segment_latency: the hippocampus data (shared/data/hippocampus) was not found; set SHARED")


def click_to_node(slicer, panel, timeout=300):
    t = time.perf_counter()
    panel.segmentButton.click()
    job = panel.job
    while not job.finished:
        slicer.app.processEvents()  # the module's QTimer polls the worker, as in Slicer
        time.sleep(0.002)
        if time.perf_counter() - t > timeout:
            raise SystemExit("segment_latency: no result within the timeout")
    if job.segmentation is None:
        raise SystemExit(f"segment_latency: the segmentation failed: {job.message}")
    worker_s = next(e["seconds"] for e in job.job.events if e["event"] == "prediction")
    return time.perf_counter() - t, worker_s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    home = pathlib.Path(tempfile.mkdtemp(prefix="micd-latency-"))
    os.environ["MICD_HOME"] = str(home)
    import slicer_harness

    slicer_harness.install(tempfile.mkdtemp(prefix="micd-latency-settings-"))
    import slicer

    from backend_models import make_runnable_model
    from scene_helpers import load_volume, new_scene

    from MICDCommon import qtsupport

    data = shared_hippocampus()
    models = home / "models"
    make_runnable_model(models / "Hippo", "Hippo")
    others = [make_runnable_model(models / f"Other{i}", f"Other{i}") for i in range(a.repeats)]  # listed by folder
    scene, keep = new_scene()
    name = sorted(p.name for p in (data / "imagesTr").iterdir())[0]
    image = data / "imagesTr" / name
    volume = load_volume(image, "hippo")
    loaded = slicer_harness.load_module("MICDSegmentation")
    panel, logic = loaded.widget.panel, loaded.widget.logic
    logic.launcher.threads = a.threads
    if not qtsupport.ensure_backend_ready(logic.launcher, log=lambda *_: None):  # the first-use check, not timed
        raise SystemExit("segment_latency: the backend's dependencies are missing")
    panel.ask_replace = lambda node: True  # segmenting the volume again replaces its result, as a user would choose
    panel.deviceCombo.setCurrentIndex(panel.deviceCombo.findText("cpu"))
    names = [m.name for m in panel.models]

    def select(model_name):
        panel.modelList.setCurrentRow(names.index(model_name))

    rows = {"cold": [], "warm": [], "warm_other_model": []}
    for i in range(a.repeats):
        logic.shutdown_worker()
        select("Hippo")
        rows["cold"].append(click_to_node(slicer, panel))
        rows["warm"].append(click_to_node(slicer, panel))
        select(f"Other{i}")
        rows["warm_other_model"].append(click_to_node(slicer, panel))
    starts = logic.worker.starts
    panel.cleanup()
    predict = []
    for i in range(a.repeats):
        out = home / f"cli{i}.nii.gz"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "micd", "predict", "--model", str(models / "Hippo"), "--input", str(image),
                        "--output", str(out), "--device", "cpu", "--num-threads", str(a.threads)], check=True,
                       capture_output=True, env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
        predict.append(time.perf_counter() - t)
    result = {"repeats": a.repeats, "threads": a.threads, "volume": name, "workers_started": starts,
              "micd_predict_process_s": [round(v, 3) for v in predict],
              "micd_predict_process_median_s": round(statistics.median(predict), 3)}
    for key, values in rows.items():
        result[key + "_s"] = [round(v[0], 3) for v in values]
        result[key + "_median_s"] = round(statistics.median(v[0] for v in values), 3)
        result[key + "_prediction_median_s"] = round(statistics.median(v[1] for v in values), 3)
    print(json.dumps(result))
    shutil.rmtree(home, ignore_errors=True)
    del keep, scene, volume, others


if __name__ == "__main__":
    main()

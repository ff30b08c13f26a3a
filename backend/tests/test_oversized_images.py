"""An image whose header declares more voxels than fit in memory (a few bytes on disk) is refused from its header,
before anything is allocated: in the dataset check of `micd train` and in `micd predict`."""

import gzip
import json
import os

from realdata import TINY, run_micd, write_dataset
from inference_helpers import make_model
from micd.cli import main

SIZES = "100000 100000 1000"  # 10^13 voxels


def oversized_nrrd(path, segment=None):
    """A gzip NRRD of a few hundred bytes whose header declares 10^13 voxels (optionally a Slicer segment)."""
    header = ["NRRD0004", "type: short", "dimension: 3", "space: left-posterior-superior", f"sizes: {SIZES}",
              "space directions: (1,0,0) (0,1,0) (0,0,1)", "kinds: domain domain domain", "endian: little",
              "encoding: gzip", "space origin: (0,0,0)"]
    if segment:
        header[1] = "type: unsigned char"
        header += ["Segment0_ID:=Segment_1", f"Segment0_Name:={segment}", "Segment0_LabelValue:=1",
                   "Segment0_Layer:=0"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n\n").encode() + gzip.compress(b"\0" * 64))
    assert os.path.getsize(path) < 1000
    return str(path)


def assert_refused_for_size(reason):
    assert "100000 x 100000 x 1000 voxels" in reason and "GiB of memory available" in reason, reason


def test_dataset_check_refuses_images_and_labels_that_declare_too_much(tmp_path, shared_data):
    ds = json.load(open(write_dataset(tmp_path)))
    ds["labeled"][0]["image"] = oversized_nrrd(tmp_path / "huge.nrrd")
    ds["labeled"][1]["label"] = oversized_nrrd(tmp_path / "huge.seg.nrrd", segment="hippocampus_anterior")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    p = run_micd("train", "--dataset", str(path), "--out", str(tmp_path / "run"), "--iterations", "2", *TINY)
    assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr
    err = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")][-1]
    assert err["kind"] == "data"
    reasons = {os.path.basename(pr["file"]): pr["reason"] for pr in err["problems"]}
    assert_refused_for_size(reasons["huge.nrrd"])
    assert_refused_for_size(reasons["huge.seg.nrrd"])


def test_predict_refuses_an_input_that_declares_too_much(tmp_path, capsys):
    model = make_model(tmp_path / "model")
    src = oversized_nrrd(tmp_path / "huge.nrrd")
    rc = main(["predict", "--model", model, "--input", src, "--output", str(tmp_path / "out.nii.gz"),
               "--device", "cpu", "--num-threads", "1"])
    assert rc == 2
    assert_refused_for_size(capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "out.nii.gz")

"""Reports and archives are replaced whole or not at all: an error mid-write keeps the earlier file."""

import json
import os

import pytest

from micd.atomicfile import open_replacing, replacing, write_json


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_part(tmp_path):
    path = tmp_path / "report.json"
    write_json(str(path), {"dice": 0.8})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json(str(path), {"dice": 0.9, "bad": Unserialisable()})  # json.dump fails halfway through
    assert json.loads(path.read_text()) == {"dice": 0.8}
    assert os.listdir(tmp_path) == ["report.json"]


def test_the_file_appears_only_when_complete(tmp_path):
    path = tmp_path / "sub" / "cases.csv"  # the parent folder is created
    with open_replacing(str(path)) as f:
        f.write("case,dice\n")
        assert not path.exists()  # readers never see a half-written file
    assert path.read_text() == "case,dice\n"


def test_replacing_removes_the_part_file_on_error(tmp_path):
    path = tmp_path / "model.zip"
    with pytest.raises(RuntimeError):
        with replacing(str(path)) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []

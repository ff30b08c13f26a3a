"""The screenshot renderer still builds both panels from the recorded real run (Testing/recorded_run/)."""

import os
import subprocess
import sys

from PyQt5 import QtGui

HERE = os.path.dirname(os.path.abspath(__file__))


def test_render_panels_from_the_recorded_run(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    p = subprocess.run([sys.executable, os.path.join(HERE, "render_panels.py"), str(tmp_path)], capture_output=True,
                       encoding="utf-8", errors="replace", timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("MICDTraining.png", "MICDSegmentation.png"):
        image = QtGui.QImage(str(tmp_path / name))
        assert image.width() == 470 and image.height() > 600, (name, image.width(), image.height())

"""The Slicer the tests run the module files in: slicer-core (MRML and module logics) plus `qt` with PythonQt's rules
over real PyQt5 widgets (pythonqt.py), strict `ctk` and application stand-ins (ctk_standin.py, slicer_standin.py),
and Slicer 5.8's ScriptedLoadableModule behaviour (scripted_module.py). `load_module` does what Slicer does with a
module file: its folder on sys.path, the module object, then the widget (which builds the panel)."""

import importlib
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULE_FOLDERS = ("MICDCommon", "MICDTraining", "MICDSegmentation")

_installed = {}


def install(settings_dir):
    """Install everything once per process; QSettings are kept in `settings_dir` (an INI file)."""
    if _installed:
        return _installed["main_window"]
    import slicer
    from PyQt5 import QtCore

    import pythonqt

    QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
    QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(settings_dir))
    pythonqt.install("qt")
    import ctk_standin
    import scripted_module
    import slicer_standin

    ctk_standin.install(sys.modules)
    _installed["main_window"] = slicer_standin.install()
    scripted_module.install(sys.modules)
    for folder in MODULE_FOLDERS:  # Slicer appends the folder of every scripted module it finds
        path = str(ROOT / folder)
        if path not in sys.path:
            sys.path.append(path)
    slicer.util.reloadScriptedModule = reload_module
    return _installed["main_window"]


class LoadedModule:
    def __init__(self, name):
        import slicer_standin

        self.name = name
        self.python = importlib.import_module(name)
        self.parent = slicer_standin.module_parent(name, os.path.abspath(self.python.__file__))
        self.module = getattr(self.python, name)(self.parent)
        widget_class = getattr(self.python, name + "Widget", None)
        self.widget = widget_class() if widget_class else None  # no parent: the base class calls setup()

    def unload(self):
        import slicer

        slicer.app.moduleManager().moduleAboutToBeUnloaded.emit(self.name)


def load_module(name):
    return LoadedModule(name)


def reload_module(name):
    """slicer.util.reloadScriptedModule: the old widget is cleaned up, the file re-imported, a new widget built."""
    import slicer

    slicer.app.moduleManager().moduleAboutToBeUnloaded.emit(name)
    importlib.reload(sys.modules[name])
    return LoadedModule(name)

"""A hidden Slicer module whose whole job is to be found: Slicer puts the folder of every scripted module it finds
on sys.path, so this file makes the shared `MICDCommon` package beside it importable, installed or in a source
checkout. MICDTraining and MICDSegmentation list it as a dependency: Slicer loads it first, and says so when its
folder was not added."""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class MICDCommonModule(ScriptedLoadableModule):
    def __init__(self, parent):
        super().__init__(parent)
        parent.title = "MICD common"
        parent.categories = ["Segmentation"]
        parent.contributors = ["MICD for 3D Slicer contributors"]
        parent.helpText = "Shared code of the MICD modules (no panel)."
        parent.hidden = True

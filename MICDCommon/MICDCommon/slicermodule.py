"""What the MICDTraining and MICDSegmentation module files share: their Logic class (the module's logic with
Slicer's ScriptedLoadableModuleLogic, each initialised once, wired to the settings and a job poller) and their
Widget's life cycle (build the panel, reattach on enter, stop polling on cleanup, reload the packages)."""

import importlib
import sys

from . import qtsupport


def module_logic(core_class, poll_ms=1000):
    """`class MICDTrainingLogic(module_logic(TrainingLogic))`: the console API of a module.

    Slicer's ScriptedLoadableModuleLogic.__init__ calls super().__init__(), so the core class comes first in the
    bases and is initialised explicitly (once, with the keyword arguments), then Slicer's base."""
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

    class ModuleLogic(core_class, ScriptedLoadableModuleLogic):
        def __init__(self, **kwargs):
            core_class.__init__(self, **qtsupport.slicer_collaborators(kwargs, poll_ms))
            ScriptedLoadableModuleLogic.__init__(self)

    ModuleLogic.__name__ = core_class.__name__ + "Module"
    return ModuleLogic


class PanelHost:
    """Mixin for a ScriptedLoadableModuleWidget: `createLogic()` and `createPanel(logic)` come from the module."""

    packages = ()  # the module's own packages, reloaded with MICDCommon by onReload

    def setup(self):
        super().setup()
        self.logic = self.createLogic()
        self.panel = self.createPanel(self.logic)
        self.layout.addWidget(self.panel.widget)

    def enter(self):
        self.panel.enter()

    def exit(self):
        self.panel.exit()

    def cleanup(self):
        """Module reload or Slicer exit: stop polling here (a running job goes on and is reattached later)."""
        self.panel.cleanup()
        if getattr(self.logic, "job_poller", None) is not None:
            self.logic.job_poller.stop()

    def onReload(self):
        """Reload the Lib and shared packages too (Slicer's Reload only re-imports the module file)."""
        prefixes = tuple(p + "." for p in (*self.packages, "MICDCommon"))
        for name in sorted(sys.modules):
            if name.startswith(prefixes):
                importlib.reload(sys.modules[name])
        super().onReload()

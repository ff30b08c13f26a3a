"""`slicer.ScriptedLoadableModule` behaving as Slicer 5.8's (Base/Python/slicer/ScriptedLoadableModule.py), written
for the harness from its documented behaviour:

- every base `__init__` calls `super().__init__()` (so a mixin after the base class is initialised with no arguments);
- the module fills `parent` (title, categories, ...: properties of the module object), takes its icon from
  Resources/Icons/<Module>.png, and registers its `runTest` in `slicer.selfTests`;
- the widget without a parent makes a qMRMLWidget with a QVBoxLayout, calls `setup()` itself and shows it; with a
  parent it uses the parent's layout; `cleanup()` runs when the module manager says the module is being unloaded;
- the logic's parameter node is a singleton vtkMRMLScriptedModuleNode tagged with the module name;
- the test class is a real unittest.TestCase; `runTest` of the module builds `<Module>Test()` and calls its runTest."""

import importlib
import logging
import os
import unittest

import qt
import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        icon = os.path.join(os.path.dirname(parent.path), "Resources", "Icons", self.moduleName + ".png")
        if os.path.isfile(icon):
            parent.icon = qt.QIcon(icon)
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        module = importlib.import_module(type(self).__module__)
        test_class = getattr(module, self.moduleName + "Test", None)
        if test_class is None:
            raise AssertionError(f"Test case class not found: {type(self).__module__}.{self.moduleName}Test")
        test = test_class()
        test.messageDelay = msec
        test.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[:-6]
        self.developerMode = False
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()
        slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def resourcePath(self, filename):
        module = importlib.import_module(type(self).__module__)
        return os.path.join(os.path.dirname(module.__file__), "Resources", filename)

    def cleanup(self):
        pass

    def _onModuleAboutToBeUnloaded(self, moduleName):
        if moduleName == self.moduleName:
            self.cleanup()
            slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)",
                                                  self._onModuleAboutToBeUnloaded)

    def setup(self):
        pass  # the developer section (Reload, Test) is shown only in developer mode, off here

    def onReload(self):
        slicer.util.reloadScriptedModule(self.moduleName)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        self.moduleTestNames = []
        super().__init__(*args, **kwargs)
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0
        if not self.moduleTestNames:
            self.moduleTestNames = [m for m in dir(self) if "test" in m and callable(getattr(self, m))]

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        msec = getattr(self, "messageDelay", None) or msec or requestedDelay or 100
        slicer.util.delayDisplay(message, msec)

    def runTest(self):
        if not self.moduleTestNames:
            logging.warning("No test is defined in " + type(self).__name__)
            return
        for name in self.moduleTestNames:
            self.setUp()
            getattr(self, name)()
            self.tearDown()


def install(sys_modules):
    import types

    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    sys_modules["slicer.ScriptedLoadableModule"] = module
    slicer.ScriptedLoadableModule = module
    return module

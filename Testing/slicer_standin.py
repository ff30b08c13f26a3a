"""The application-level parts of `slicer` that PyPI slicer-core lacks, as strict stand-ins on real Qt objects, with
only the members of the Slicer 5.8 classes they stand for (Libs/MRML/Widgets/qMRMLNodeComboBox.h, qMRMLWidget.h,
Base/QTGUI/qSlicerScriptedLoadableModule.h, qSlicerModuleManager.h):

- `slicer.qMRMLWidget`, `slicer.qMRMLNodeComboBox` (lists the scene's nodes of its types, follows the scene);
- `slicer.app` (processEvents, testingEnabled, moduleManager) and a main window for `slicer.util.mainWindow()`;
- `slicer.util.errorDisplay/warningDisplay/infoDisplay/delayDisplay`, recorded as dialogs (parent: the main window
  unless given, as Slicer's messageBox does);
- the module object a ScriptedLoadableModule gets as `parent` (`module_parent`)."""

import logging
import weakref

import slicer
from PyQt5 import QtCore, QtWidgets, sip
from PyQt5.QtCore import pyqtProperty, pyqtSignal, pyqtSlot

import pythonqt
from dialogs import DIALOGS


def _stored_properties(specs):
    """Class-body members for each (name, type, default[, method to call on change]): a Q_PROPERTY and its `setX`.
    Used as `vars().update(_stored_properties(...))` inside the class body: PyQt builds the metaobject from it."""
    members = {}
    for spec in specs:
        name, type_, default = spec[:3]
        on_change = spec[3] if len(spec) > 3 else None

        def get(self, _name=name, _default=default):
            return self._values.get(_name, _default)

        def set_(self, value, _name=name, _on_change=on_change):
            self._values[_name] = value
            if _on_change:
                getattr(self, _on_change)()

        members[name] = pyqtProperty(type_, get, set_)
        members["set" + name[0].upper() + name[1:]] = set_
    return members


class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = pyqtSignal(object)
    PYTHONQT_SIGNATURES = ("mrmlSceneChanged(vtkMRMLScene*)",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._values = {}

    @pyqtSlot(object)
    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


_OBSERVING = weakref.WeakSet()  # node combo boxes observing a scene


def release_scene(scene):
    """Before a scene is cleared and dropped: node combo boxes stop observing it (in Slicer the widgets go first;
    here a failed test keeps its widgets alive in its traceback, and scene events reaching them while the garbage
    collector tears them down crash the process)."""
    for combo in list(_OBSERVING):
        if combo._scene is scene:
            combo._stop_observing()


class qMRMLNodeComboBox(qMRMLWidget):
    currentNodeChanged = pyqtSignal([object], [bool])
    currentNodeIDChanged = pyqtSignal(str)
    nodeActivated = pyqtSignal(object)
    nodeAdded = pyqtSignal(object)
    nodeAddedByUser = pyqtSignal(object)
    nodeAboutToBeRemoved = pyqtSignal(object)
    currentNodeRenamed = pyqtSignal(str)
    nodeAboutToBeEdited = pyqtSignal(object)
    PYTHONQT_SIGNATURES = tuple(f"{name}(vtkMRMLNode*)" for name in (
        "currentNodeChanged", "nodeActivated", "nodeAdded", "nodeAddedByUser", "nodeAboutToBeRemoved",
        "nodeAboutToBeEdited"))

    def __init__(self, parent=None):
        super().__init__(parent)
        self._combo = QtWidgets.QComboBox(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._combo)
        self._nodes = []
        self._current = None
        self._observations = []
        self._combo.activated.connect(lambda index: self._select(self._node_at(index), activated=True))

    # scene and node list
    @pyqtSlot(object)
    def setMRMLScene(self, scene):
        self._stop_observing()
        super().setMRMLScene(scene)
        if scene is not None:
            this = weakref.ref(self)

            def refresh(*_):
                combo = this()
                if combo is not None and not sip.isdeleted(combo):
                    combo._refresh()

            self._observations = [scene.AddObserver(e, refresh) for e in (scene.NodeAddedEvent,
                                                                          scene.NodeRemovedEvent, scene.EndCloseEvent)]
            _OBSERVING.add(self)
        self._refresh()

    def _stop_observing(self):
        for tag in self._observations:
            self._scene.RemoveObserver(tag)
        self._observations = []
        _OBSERVING.discard(self)

    def _matches(self, node):
        types = self._values.get("nodeTypes", [])
        if not any(node.IsA(t) for t in types):
            return False
        if not self._values.get("showChildNodeTypes", True):  # qMRMLSortFilterProxyModel::filterAcceptsRow
            if node.GetClassName() not in types:
                return False
        elif any(node.IsA(t) for t in self._values.get("hideChildNodeTypes", [])):  # only when children show
            return False
        return self._values.get("showHidden", False) or not node.GetHideFromEditors()

    def _refresh(self):
        scene = self._scene
        nodes = []
        if scene is not None:
            collection = scene.GetNodes()
            nodes = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
            nodes = [n for n in nodes if n is not None and self._matches(n)]
        self._nodes = nodes
        self._combo.blockSignals(True)
        self._combo.clear()
        if self._values.get("noneEnabled", False):
            self._combo.addItem(self._values.get("noneDisplay", "None"))
        for node in nodes:
            self._combo.addItem(node.GetName())
        self._combo.blockSignals(False)
        current = self._current if self._current in nodes else None
        if current is None and nodes and not self._values.get("noneEnabled", False):
            current = nodes[0]
        self._select(current, force=current is not self._current)

    def _offset(self):
        return 1 if self._values.get("noneEnabled", False) else 0

    def _node_at(self, index):
        index -= self._offset()
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def _select(self, node, force=False, activated=False):
        changed = node is not self._current
        self._current = node
        self._combo.blockSignals(True)
        self._combo.setCurrentIndex(self._nodes.index(node) + self._offset() if node in self._nodes
                                    else (0 if self._offset() else -1))
        self._combo.blockSignals(False)
        if changed or force:
            self.currentNodeChanged[object].emit(node)
            self.currentNodeChanged[bool].emit(node is not None)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")
        if activated:
            self.nodeActivated.emit(node)

    # the public API of qMRMLNodeComboBox
    def currentNode(self):
        return self._current

    @pyqtSlot(object)
    def setCurrentNode(self, node):
        if isinstance(node, str):
            node = self._scene.GetNodeByID(node) if self._scene is not None else None
        self._select(node if node in self._nodes else None)

    @pyqtSlot(str)
    def setCurrentNodeID(self, node_id):
        self.setCurrentNode(node_id)

    @pyqtSlot(int)
    def setCurrentNodeIndex(self, index):
        self._select(self._nodes[index] if 0 <= index < len(self._nodes) else None)

    def nodeCount(self):
        return len(self._nodes)

    def nodeFromIndex(self, index):
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def _current_id(self):
        return self._current.GetID() if self._current is not None else ""

    currentNodeID = pyqtProperty(str, _current_id, setCurrentNodeID, notify=currentNodeIDChanged)

    def _size_adjust_policy(self):
        return self._combo.sizeAdjustPolicy()

    def setSizeAdjustPolicy(self, policy):
        self._combo.setSizeAdjustPolicy(policy)

    sizeAdjustPolicy = pyqtProperty(QtWidgets.QComboBox.SizeAdjustPolicy, _size_adjust_policy, setSizeAdjustPolicy)
    vars().update(_stored_properties([
        ("nodeTypes", "QStringList", [], "_refresh"),
        ("showHidden", bool, False, "_refresh"),
        ("showChildNodeTypes", bool, True, "_refresh"),
        ("hideChildNodeTypes", "QStringList", [], "_refresh"),
        ("baseName", str, ""),
        ("noneEnabled", bool, False, "_refresh"),
        ("addEnabled", bool, True),
        ("removeEnabled", bool, True),
        ("editEnabled", bool, False),
        ("renameEnabled", bool, False),
        ("interactionNodeSingletonTag", str, ""),
        ("selectNodeUponCreation", bool, True),
        ("noneDisplay", str, "None", "_refresh"),
    ]))


class qSlicerScriptedLoadableModule(QtCore.QObject):
    """What a ScriptedLoadableModule receives as `parent`: the module's title, categories, help... as properties."""

    def __init__(self, name, path):
        super().__init__()
        self._values = {"name": name, "path": path}

    name = pyqtProperty(str, lambda self: self._values["name"])
    path = pyqtProperty(str, lambda self: self._values["path"])
    vars().update(_stored_properties([
        ("title", str, ""), ("categories", "QStringList", []), ("contributors", "QStringList", []),
        ("associatedNodeTypes", "QStringList", []), ("helpText", str, ""), ("acknowledgementText", str, ""),
        ("extensions", "QVariantMap", {}), ("hidden", bool, False), ("dependencies", "QStringList", []),
        ("index", int, -1), ("icon", "QIcon", None),
    ]))


class qSlicerModuleManager(QtCore.QObject):
    moduleLoaded = pyqtSignal(str)
    moduleAboutToBeUnloaded = pyqtSignal(str)


class qSlicerApplication(QtCore.QObject):
    """`slicer.app`: only what the modules use (processEvents, testingEnabled, moduleManager)."""

    def __init__(self):
        super().__init__()
        self._module_manager = qSlicerModuleManager(self)

    @staticmethod
    def processEvents():
        QtWidgets.QApplication.processEvents()

    def testingEnabled(self):
        return False

    def moduleManager(self):
        return self._module_manager

    applicationName = pyqtProperty(str, lambda self: "Slicer")
    applicationVersion = pyqtProperty(str, lambda self: "5.8.1")


class qSlicerMainWindow(QtWidgets.QMainWindow):
    pass


def module_parent(name, path):
    return pythonqt.wrap(qSlicerScriptedLoadableModule(name, path))


def _message_display(kind):
    def display(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        getattr(logging, {"error": "error", "warning": "warning", "info": "info"}[kind])(text)
        parent = parent or slicer.util.mainWindow()
        DIALOGS.record(f"slicer.util.{kind}Display", (parent, windowTitle or f"Slicer {kind}", text), asks=False)
    return display


def _delay_display(message, autoCloseMsec=1000, parent=None, **kwargs):
    logging.info(message)
    slicer.app.processEvents()


def install():
    """Put the stand-ins on the `slicer` package (slicer-core's)."""
    slicer.qMRMLWidget = pythonqt.wrapper_class(qMRMLWidget)
    slicer.qMRMLNodeComboBox = pythonqt.wrapper_class(qMRMLNodeComboBox)
    slicer.app = pythonqt.wrap(qSlicerApplication())
    main_window = pythonqt.wrap(qSlicerMainWindow())
    slicer.util.mainWindow = lambda: main_window
    slicer.util.errorDisplay = _message_display("error")
    slicer.util.warningDisplay = _message_display("warning")
    slicer.util.infoDisplay = _message_display("info")
    slicer.util.delayDisplay = _delay_display
    return main_window


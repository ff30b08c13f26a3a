"""A minimal stand-in for PythonQt's `qt` and `ctk` modules (and the few Slicer widgets the panels use), enough
to import the module files, build their widgets and click their buttons headless. Not a Qt emulation: widgets
keep the properties the panels read, record signal connections, and `click()` / `emit()` call the slots."""

import sys
import types


class FakeObject:
    """Any Qt object: unknown methods are recording no-ops; `connect(signal, slot)` + `emit(signal)`."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_slots"] = {}
        self.__dict__["calls"] = []
        self.__dict__["args"] = args

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)
        return True

    def disconnect(self, signal=None, slot=None):
        if signal is None:
            self._slots.clear()
        elif slot is None:
            self._slots.pop(signal, None)
        elif slot in self._slots.get(signal, []):
            self._slots[signal].remove(slot)

    def emit(self, signal, *args):
        for slot in list(self._slots.get(signal, [])):
            slot(*args)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def method(*args, **kwargs):
            self.calls.append((name, args))
            return FakeObject()

        return method


class QWidget(FakeObject):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.text = args[0] if args and isinstance(args[0], str) else ""

    def setEnabled(self, value):
        self.enabled = bool(value)

    def setVisible(self, value):
        self.visible = bool(value)

    def setToolTip(self, text):
        self.toolTip = text

    def setText(self, text):
        self.text = text

    def click(self):
        if self.enabled:
            self.emit("clicked()")
            self.emit("clicked(bool)", False)


class QLineEdit(QWidget):
    def __init__(self, text="", *args):
        super().__init__()
        self.text = text

    def setText(self, text):
        self.text = text
        self.emit("textChanged(QString)", text)


class QSpinBox(QWidget):
    def __init__(self, *args):
        super().__init__()
        self.value, self.minimum, self.maximum = 0, 0, 99

    def setValue(self, value):
        self.value = value
        self.emit("valueChanged(int)", value)

    def setRange(self, low, high):
        self.minimum, self.maximum = low, high


class QDoubleSpinBox(QSpinBox):
    pass


class QCheckBox(QWidget):
    def __init__(self, *args):
        super().__init__(*args)
        self.checked = False

    def setChecked(self, value):
        self.checked = bool(value)
        self.emit("toggled(bool)", self.checked)


class QComboBox(QWidget):
    def __init__(self, *args):
        super().__init__()
        self.items = []
        self.currentIndex = -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def addItems(self, texts):
        for t in texts:
            self.addItem(t)

    def clear(self):
        self.items, self.currentIndex = [], -1

    @property
    def count(self):
        return len(self.items)

    @property
    def currentText(self):
        return self.items[self.currentIndex][0] if 0 <= self.currentIndex < len(self.items) else ""

    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None

    def setCurrentIndex(self, index):
        self.currentIndex = index
        self.emit("currentIndexChanged(int)", index)

    def findText(self, text):
        return next((i for i, (t, _d) in enumerate(self.items) if t == text), -1)

    def itemText(self, index):
        return self.items[index][0]


class QProgressBar(QWidget):
    def __init__(self, *args):
        super().__init__()
        self.value, self.maximum, self.format = 0, 100, ""

    def setValue(self, value):
        self.value = value

    def setMaximum(self, value):
        self.maximum = value

    def setFormat(self, text):
        self.format = text


class QPlainTextEdit(QWidget):
    def __init__(self, *args):
        super().__init__()
        self.lines = []

    def appendPlainText(self, text):
        self.lines.extend(str(text).split("\n"))

    def clear(self):
        self.lines = []

    def toPlainText(self):
        return "\n".join(self.lines)


class QTableWidgetItem(FakeObject):
    def __init__(self, text=""):
        super().__init__()
        self._text = text

    def text(self):
        return self._text

    def setText(self, text):
        self._text = text


class QTableWidget(QWidget):
    def __init__(self, rows=0, columns=0, *args):
        super().__init__()
        self.rowCount, self.columnCount = rows, columns
        self.cells = {}
        self.widgets = {}
        self.selected = []

    def setRowCount(self, n):
        self.rowCount = n
        self.cells = {k: v for k, v in self.cells.items() if k[0] < n}

    def setColumnCount(self, n):
        self.columnCount = n

    def insertRow(self, row):
        self.rowCount += 1

    def setItem(self, row, column, item):
        self.cells[(row, column)] = item

    def item(self, row, column):
        return self.cells.get((row, column))

    def setCellWidget(self, row, column, widget):
        self.widgets[(row, column)] = widget

    def cellWidget(self, row, column):
        return self.widgets.get((row, column))

    def currentRow(self):
        return self.selected[0] if self.selected else -1

    def selectRow(self, row):
        self.selected = [row]


class QListWidgetItem(QTableWidgetItem):
    pass


class QListWidget(QWidget):
    def __init__(self, *args):
        super().__init__()
        self.entries = []
        self.currentRowValue = -1

    def addItem(self, item):
        self.entries.append(item if isinstance(item, QListWidgetItem) else QListWidgetItem(item))

    def clear(self):
        self.entries, self.currentRowValue = [], -1

    @property
    def count(self):
        return len(self.entries)

    def item(self, row):
        return self.entries[row]

    def currentRow(self):
        return self.currentRowValue

    def setCurrentRow(self, row):
        self.currentRowValue = row
        self.emit("currentRowChanged(int)", row)

    def takeItem(self, row):
        return self.entries.pop(row)


class QTimer(FakeObject):
    def __init__(self, *args):
        super().__init__()
        self.active, self.interval = False, 0

    def start(self, *args):
        self.active = True

    def stop(self):
        self.active = False

    def setInterval(self, ms):
        self.interval = ms

    def isActive(self):
        return self.active

    @staticmethod
    def singleShot(ms, slot):
        slot()


class QMessageBox(FakeObject):
    """Dialog answers are set by tests through `QMessageBox.answer`."""

    Yes, No, Ok, Cancel = 0x4000, 0x10000, 0x400, 0x400000
    answer = 0x4000

    @classmethod
    def question(cls, *args, **kwargs):
        return cls.answer


class QFileDialog(FakeObject):
    """Tests set `QFileDialog.next_path` to what the next dialog returns."""

    next_path = ""

    @classmethod
    def getExistingDirectory(cls, *args, **kwargs):
        return cls.next_path

    @classmethod
    def getOpenFileName(cls, *args, **kwargs):
        return cls.next_path

    @classmethod
    def getSaveFileName(cls, *args, **kwargs):
        return cls.next_path


class QSettings(FakeObject):
    store = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


class _Namespace(types.ModuleType):
    """A module whose unknown attributes are FakeObject classes (QVBoxLayout, QGroupBox, ...) or constants."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name[:1] == "Q" or name[:3] == "ctk":
            cls = type(name, (QWidget,), {})
            setattr(self, name, cls)
            return cls
        return 0


class qMRMLNodeComboBox(QWidget):
    """slicer.qMRMLNodeComboBox stand-in: `currentNode()` returns what `setCurrentNode` set."""

    def __init__(self, *args):
        super().__init__()
        self.nodeTypes, self._node, self.mrmlScene = [], None, None

    def setMRMLScene(self, scene):
        self.mrmlScene = scene

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        self._node = node
        self.emit("currentNodeChanged(vtkMRMLNode*)", node)


def install():
    """Register the stand-ins as `qt`, `ctk`, `slicer.qMRMLNodeComboBox` and `slicer.ScriptedLoadableModule`."""
    import slicer

    qt = _Namespace("qt")
    for cls in (QWidget, QLineEdit, QSpinBox, QDoubleSpinBox, QCheckBox, QComboBox, QProgressBar, QPlainTextEdit,
                QTableWidget, QTableWidgetItem, QListWidget, QListWidgetItem, QTimer, QMessageBox, QFileDialog,
                QSettings):
        setattr(qt, cls.__name__, cls)
    qt.QPushButton = type("QPushButton", (QWidget,), {})
    qt.QLabel = type("QLabel", (QWidget,), {})
    qt.Qt = types.SimpleNamespace(AlignLeft=1, AlignRight=2, AlignTop=32, ItemIsEnabled=32, ItemIsSelectable=1,
                                  UserRole=256)
    ctk = _Namespace("ctk")
    sys.modules["qt"] = qt
    sys.modules["ctk"] = ctk
    slicer.qMRMLNodeComboBox = qMRMLNodeComboBox
    slicer.qMRMLSubjectHierarchyComboBox = type("qMRMLSubjectHierarchyComboBox", (qMRMLNodeComboBox,), {})
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = ScriptedLoadableModule
    slm.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    sys.modules["slicer.ScriptedLoadableModule"] = slm
    slicer.ScriptedLoadableModule = slm


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else QWidget()
        self.layout = QWidget()
        self.moduleName = type(self).__name__[: -len("Widget")]

    def setup(self):
        pass

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[: -len("Logic")]

    def getParameterNode(self):
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest:
    """unittest-style self tests of real Slicer; here only their existence and structure are checked."""

    def setUp(self):
        pass

    def delayDisplay(self, message, msec=0):
        pass

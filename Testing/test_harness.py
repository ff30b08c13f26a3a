"""The harness rejects what Slicer's PythonQt rejects (and the stand-ins have only the real classes' members): each
case here is a mistake that passed the old permissive stand-in and fails in Slicer."""

import pytest
import qt
import slicer

import ctk
import pythonqt
from dialogs import DIALOGS


def test_properties_are_attributes_and_calling_one_fails_as_in_slicer():
    widget = qt.QListWidget()
    widget.addItem("a")
    widget.addItem("b")
    widget.currentRow = 1
    assert widget.currentRow == 1 and widget.count == 2
    with pytest.raises(TypeError, match="'int' object is not callable"):
        widget.currentRow()
    combo = qt.QComboBox()
    combo.addItem("CPS", "cps")
    with pytest.raises(TypeError, match="'str' object is not callable"):
        combo.currentData()
    with pytest.raises(AttributeError, match="not writable"):
        combo.count = 3


def test_unknown_attributes_and_new_attributes_on_qt_objects_fail():
    button = qt.QPushButton("OK")
    with pytest.raises(AttributeError, match="has no attribute named 'txt'"):
        button.txt
    with pytest.raises(AttributeError, match="creating new attributes on C"):
        button.txt = "typo"
    with pytest.raises(AttributeError, match="has no attribute"):
        qt.QMessageBox.Yess

    class Panel(qt.QWidget):  # a Python subclass may add attributes, as in PythonQt
        pass

    panel = Panel()
    panel.extra = 1
    assert panel.extra == 1


def test_signals_by_signature_with_pythonqt_argument_rules():
    button = qt.QPushButton("OK")
    got = []
    button.connect("clicked(bool)", lambda checked: got.append(("bool", checked)))
    button.connect("clicked()", lambda: got.append("no argument"))
    button.connect("clicked(bool)", lambda: got.append("takes none"))  # PythonQt passes only what a slot takes
    button.click()
    assert got == [("bool", False), "no argument", "takes none"]
    with pytest.raises(ValueError, match="has no signal 'clicked\\(int\\)'"):
        button.connect("clicked(int)", print)
    with pytest.raises(ValueError, match="has no signal 'pressedd\\(\\)'"):
        button.connect("pressedd()", print)

    def broken():
        raise KeyError("in a slot")

    button.connect("clicked()", broken)
    with pytest.raises(KeyError, match="in a slot"):
        button.click()  # the emitting call reports the slot's failure
    pythonqt.raise_slot_errors()  # and nothing is left over


def test_stand_ins_have_only_the_members_of_the_real_classes(scene):
    box = ctk.ctkCollapsibleButton()
    box.collapsed = True
    assert box.collapsed is True and box.checked is False
    with pytest.raises(TypeError):
        box.collapsed()
    with pytest.raises(AttributeError):
        box.collapsible  # not a member of ctkCollapsibleButton
    with pytest.raises(AttributeError):
        ctk.ctkPathLineEdit  # not provided until a panel uses it (and then with its real members)

    combo = slicer.qMRMLNodeComboBox()
    combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    combo.setMRMLScene(slicer.mrmlScene)
    assert combo.currentNode() is None and combo.currentNodeID == ""
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    assert combo.currentNode() is volume and combo.nodeCount() == 1  # follows the scene; noneEnabled is off
    with pytest.raises(TypeError):
        combo.nodeTypes()
    with pytest.raises(ValueError):
        combo.connect("currentNodeChanged(vtkMRMLScene*)", print)  # no such overload
    with pytest.raises(AttributeError):
        combo.setNodeType("vtkMRMLLabelMapVolumeNode")  # the setter is setNodeTypes


def test_keyword_arguments_to_wrapped_qt_calls_fail_as_in_pythonqt():
    """PythonQt maps no keyword to a C++ parameter (PythonQtSlotFunction_CallImpl): methods, slots, static methods
    and constructors all raise its ValueError, where PyQt would accept `addItem(text="a")`."""
    combo = qt.QComboBox()
    with pytest.raises(ValueError, match="keyword arguments, but called slot does not support kwargs"):
        combo.addItem(text="a")
    with pytest.raises(ValueError, match="keyword arguments"):
        combo.setCurrentIndex(index=0)
    with pytest.raises(ValueError, match="keyword arguments"):
        qt.QPushButton(text="OK")  # no property keywords in constructors either
    with pytest.raises(ValueError, match="keyword arguments"):
        qt.QColor(r=1, g=2, b=3)  # nor in a value class's
    with pytest.raises(ValueError, match="keyword arguments"):
        qt.QFileDialog.getExistingDirectory(None, caption="Folder")  # static methods (a harness dialog here)
    with pytest.raises(ValueError, match="keyword arguments"):
        combo.connect("currentIndexChanged(int)", slot=print)
    table = qt.QTableWidget(1, 1)
    table.setItem(0, 0, qt.QTableWidgetItem("x"))
    with pytest.raises(ValueError, match="keyword arguments"):
        table.item(0, 0).setText(text="y")  # a non-QObject value's methods
    combo.addItem("a")  # positional arguments work as before
    combo.addItem("b", "data b")
    assert combo.count == 2 and combo.itemData(1) == "data b"
    assert not DIALOGS.shown  # the refused static dialog never opened


def test_node_selectors_offer_scalar_volumes_only(scene):
    """The panels' volume selectors (qtsupport.node_selector) offer what Slicer's qMRMLNodeComboBox offers with
    showChildNodeTypes off: vtkMRMLScalarVolumeNode itself, not the label maps and vector volumes derived from it."""
    from MICDCommon import qtsupport

    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "CT labels")
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB photo")
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLDiffusionWeightedVolumeNode", "DWI")
    combo = qtsupport.node_selector("vtkMRMLScalarVolumeNode")
    assert combo.nodeCount() == 1 and combo.nodeFromIndex(0) is volume and combo.currentNode() is volume
    combo.setCurrentNode(slicer.mrmlScene.GetFirstNodeByName("CT labels"))
    assert combo.currentNode() is None  # not offered, so not selectable
    later = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "later labels")
    assert combo.nodeCount() == 1 and later is not combo.currentNode()
    # the stand-in filters as qMRMLSortFilterProxyModel does: children shown unless hidden by hideChildNodeTypes,
    # which applies only while showChildNodeTypes is on
    combo.showChildNodeTypes = True
    assert combo.nodeCount() == 5
    combo.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
    assert combo.nodeCount() == 3
    combo.showChildNodeTypes = False
    assert combo.nodeCount() == 1

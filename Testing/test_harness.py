"""The harness rejects what Slicer's PythonQt rejects (and the stand-ins have only the real classes' members): each
case here is a mistake that passed the old permissive stand-in and fails in Slicer."""

import pytest
import qt
import slicer

import ctk
import pythonqt


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

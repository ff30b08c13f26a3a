"""Modal dialogs under the harness: nothing opens. Each dialog is recorded (kind, parent, title, text); one that
asks something takes the next answer the test queued with `DIALOGS.answer(...)`, and fails the test when there is
none. Message boxes (error, warning, information) need no answer and return Ok.

The values returned are what PythonQt returns in Slicer: a path string from QFileDialog, the text from
QInputDialog.getText ("" when cancelled), a StandardButton from QMessageBox."""

from dataclasses import dataclass

from PyQt5 import QtWidgets

QUESTIONS = {
    QtWidgets.QMessageBox: {"question"},
    QtWidgets.QFileDialog: {"getExistingDirectory", "getOpenFileName", "getSaveFileName", "getOpenFileNames"},
    QtWidgets.QInputDialog: {"getText", "getInt", "getDouble", "getItem"},
}
MESSAGES = {QtWidgets.QMessageBox: {"critical", "warning", "information", "about"}}


class UnansweredDialog(AssertionError):
    """A dialog asked something the test did not answer."""


@dataclass
class Dialog:
    kind: str
    parent: object
    title: str
    text: str


class DialogRecorder:
    def __init__(self):
        self.shown = []
        self._answers = []
        # how a dialog's parent is shown to the test (pythonqt sets its wrapper: the parent as Slicer code sees it)
        self.present = lambda obj: obj

    def answer(self, *values):
        """Queue answers for the next dialogs that ask (in order)."""
        self._answers.extend(values)

    def reset(self):
        self.shown, self._answers = [], []

    @property
    def unused_answers(self):
        return list(self._answers)

    def record(self, kind, args, asks):
        parent = self.present(args[0]) if args else None
        title = str(args[1]) if len(args) > 1 else ""
        text = str(args[2]) if len(args) > 2 and isinstance(args[2], str) else ""
        dialog = Dialog(kind, parent, title, text)
        self.shown.append(dialog)
        if not asks:
            return QtWidgets.QMessageBox.Ok
        if not self._answers:
            raise UnansweredDialog(f"{kind} dialog '{title}' ({text[:200]}) opened with no answer queued")
        return self._answers.pop(0)


DIALOGS = DialogRecorder()


def static_dialog(pyqt_class, name):
    """The harness's stand-in for a modal static dialog function of `pyqt_class`, or None if `name` is not one."""
    for cls, names in QUESTIONS.items():
        if issubclass(pyqt_class, cls) and name in names:
            return lambda *args: DIALOGS.record(f"{cls.__name__}.{name}", args, asks=True)
    for cls, names in MESSAGES.items():
        if issubclass(pyqt_class, cls) and name in names:
            return lambda *args: DIALOGS.record(f"{cls.__name__}.{name}", args, asks=False)
    return None


def exec_dialog(dialog):
    """`dialog.exec_()` on an instance: recorded with its window title and (message box) text; asks."""
    def run(*_args):
        text = dialog.text() if isinstance(dialog, QtWidgets.QMessageBox) else ""
        asks = not isinstance(dialog, QtWidgets.QMessageBox) or dialog.standardButtons() != QtWidgets.QMessageBox.Ok
        return DIALOGS.record(f"{type(dialog).__name__}.exec", (dialog.parentWidget(), dialog.windowTitle(), text),
                              asks=asks)
    return run

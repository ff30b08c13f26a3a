"""The one-click "Segment" panel: the model list with provenance (rename, delete, export zip, import), the input
volume, options, and Segment / Cancel with a progress bar fed by `micd predict`'s progress events (windows done /
total, time left). All work is delegated to `Logic.SegmentationLogic`."""

import time

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from MICDCommon import qtsupport
from MICDCommon.jobs import CANCELLED, SUCCEEDED

from .Parameters import SegmentationSettings

try:
    from slicer.i18n import tr as _
except ImportError:  # headless tests
    def _(text):
        return text


class SegmentationWidget(VTKObservationMixin):
    """Owns the panel's widgets; `widget` is what the module adds to its layout. Observes the scene until `cleanup`:
    a segmentation whose volume is deleted, or that runs while the scene is closed, is cancelled (the volume
    selector itself follows the scene, and Segment follows the selector)."""

    def __init__(self, logic, show_error=None, dependency_check=None, ask_text=None, ask_replace=None):
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.show_error = show_error or (lambda text: slicer.util.errorDisplay(text))
        # dependency_check(then) -> True when the backend can run now; else False, and then() runs once it can
        self.dependency_check = dependency_check or (lambda then=None: qtsupport.ensure_backend_ready(
            self.logic.launcher, self.appendLog, show_error=self.show_error, then=then))
        self.ask_text = ask_text or self._askText
        self.ask_replace = ask_replace or self._askReplace
        self.models = []
        self.job = None
        self.importJob = None  # a model import running in a worker thread
        self._started = None
        self._cancelling = False
        self._leaving = False  # the module was left while a segmentation ran: end the worker when it has finished
        self.widget = qt.QWidget()
        layout = qt.QVBoxLayout(self.widget)
        self._buildModels(layout)
        self._buildSegment(layout)
        layout.addStretch(1)
        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.connect("timeout()", self.onTick)
        # the worker's idle timeout and a changed backend Python are noticed when it is polled: also between clicks
        self.workerTimer = qt.QTimer()
        self.workerTimer.setInterval(30000)
        self.workerTimer.connect("timeout()", self.logic.worker.poll)
        self.refreshModels()
        self.updateButtons()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAboutToBeRemovedEvent, self.onNodeAboutToBeRemoved)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneAboutToBeClosed)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)

    def _buildModels(self, layout):
        _box, form = qtsupport.section(_("Models"), layout)
        self.modelList = qt.QListWidget()
        self.modelList.setMaximumHeight(100)
        self.modelList.connect("currentRowChanged(int)", lambda _row: self.onModelSelected())
        form.addRow(self.modelList)
        self.provenanceLabel = qt.QLabel("")
        self.provenanceLabel.wordWrap = True
        form.addRow(self.provenanceLabel)
        self.renameButton = qtsupport.button(_("Rename..."), _("Give the selected model another name"), self.onRename)
        self.deleteButton = qtsupport.button(_("Delete"), _("Delete the selected model from the model folder"), self.onDelete)
        self.exportButton = qtsupport.button(_("Export zip..."), _("Save the selected model as a zip to share"), self.onExport)
        self.importZipButton = qtsupport.button(_("Import zip..."), _("Add a model from a zip file"), self.onImportZip)
        self.importFolderButton = qtsupport.button(_("Import folder..."), _("Add a model folder (model.json + weights)"),
                                          self.onImportFolder)
        form.addRow(qtsupport.button_grid([self.renameButton, self.deleteButton, self.exportButton,
                                           self.importZipButton, self.importFolderButton], 3))

    def _buildSegment(self, layout):
        _box, form = qtsupport.section(_("Segment"), layout)
        self.volumeSelector = qtsupport.node_selector("vtkMRMLScalarVolumeNode")
        self.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _node: self.updateButtons())
        form.addRow(_("Volume:"), self.volumeSelector)
        self.deviceCombo = qt.QComboBox()
        self.deviceCombo.addItems(["auto", "cpu"])  # auto: the first GPU the backend sees, else the CPU
        form.addRow(_("Device:"), self.deviceCombo)
        self.uncertaintyCheck = qt.QCheckBox(_("Also load an uncertainty map"))
        form.addRow(self.uncertaintyCheck)
        self.ttaCheck = qt.QCheckBox(_("Test-time augmentation (slower)"))
        form.addRow(self.ttaCheck)
        self.segmentButton = qtsupport.button(_("Segment"), _("Segment the volume with the selected model"), self.onSegment)
        self.cancelButton = qtsupport.button(_("Cancel"), _("Stop the segmentation"), self.onCancel)
        form.addRow(qtsupport.button_grid([self.segmentButton, self.cancelButton], 2))
        self.progressBar = qt.QProgressBar()
        form.addRow(self.progressBar)
        self.statusLabel = qt.QLabel(_("Idle"))
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)
        self.logText = qt.QPlainTextEdit()
        self.logText.setReadOnly(True)
        form.addRow(self.logText)

    # --- models ---------------------------------------------------------------------------------------------------
    def refreshModels(self, select=None):
        self.models = self.logic.models()
        self.modelList.clear()
        for model in self.models:
            self.modelList.addItem(model.name)
        names = [m.name for m in self.models]
        if self.models:
            self.modelList.setCurrentRow(names.index(select) if select in names else 0)
        self.onModelSelected()

    def selectedModel(self):
        row = self.modelList.currentRow
        return self.models[row] if 0 <= row < len(self.models) else None

    def onModelSelected(self):
        model = self.selectedModel()
        self.provenanceLabel.setText(model.summary() if model else _("No model yet: train one in 'Train "
                                                                      "semi-supervised' or import one."))
        self.updateButtons()

    def _guarded(self, action, *args):
        try:
            return action(*args)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.show_error(str(e))
            return None

    def onRename(self):
        model = self.selectedModel()
        new_name = model and self.ask_text(_("Rename model"), _("New name:"), model.name)
        if new_name:
            renamed = self._guarded(self.logic.rename_model, model, new_name)
            self.refreshModels(select=renamed.name if renamed else None)

    def onDelete(self):
        model = self.selectedModel()
        if model and qtsupport.confirm(_("Delete the model '") + model.name + _("'? This cannot be undone.")):
            self._guarded(self.logic.delete_model, model)
            self.refreshModels()

    def onExport(self):
        model = self.selectedModel()
        path = model and qt.QFileDialog.getSaveFileName(qtsupport.main_window(), _("Export model"), model.folder_name + ".zip",
                                                        "Zip (*.zip)")
        if path:
            if self._guarded(self.logic.export_model, model, path, True):  # the save dialog asked before replacing
                self.appendLog(_("Exported to ") + path)

    def onImportZip(self):
        if not self.dependency_check(then=self.onImportZip):  # the import asks the backend to load the model
            return
        self._import(qt.QFileDialog.getOpenFileName(qtsupport.main_window(), _("Import model zip"), "", "Zip (*.zip)"))

    def onImportFolder(self):
        if not self.dependency_check(then=self.onImportFolder):
            return
        self._import(qt.QFileDialog.getExistingDirectory(qtsupport.main_window(), _("Import model folder")))

    def _import(self, path):
        if not path:
            return
        self.appendLog(_("Importing and checking the model in ") + path + " ...")
        self.importJob = self.logic.start_import(path, self.onImported)

    def onImported(self, job):
        self.importJob = None
        if job.error is not None:
            self.show_error(str(job.error))
            return
        self.appendLog(_("Imported model '") + job.result.name + "'.")
        self.refreshModels(select=job.result.name)

    # --- segmenting -----------------------------------------------------------------------------------------------
    def settings(self):
        return SegmentationSettings(device=self.deviceCombo.currentText, uncertainty=bool(self.uncertaintyCheck.checked),
                                    tta=bool(self.ttaCheck.checked))

    def onSegment(self):
        volume, model = self.volumeSelector.currentNode(), self.selectedModel()
        if volume is None or model is None:
            self.show_error(_("Select a volume and a model."))
            return
        if volume.GetScene() is None:  # the selector had not followed a deletion yet
            self.show_error(_("The volume '") + volume.GetName() + _("' was deleted from the scene; select another "
                                                                     "volume."))
            self.updateButtons()
            return
        if not self.dependency_check(then=self.onSegment):  # first: once ready, onSegment runs again from the top
            return
        replace = False
        previous = self.logic.previous_result(volume)
        if previous is not None:
            replace = self.ask_replace(previous)
            if replace is None:
                return
        self.logText.clear()
        try:
            self.job = self.logic.segment(volume, model, settings=self.settings(), replace=replace,
                                          on_log=self.appendLog, on_finished=self.onFinished, on_event=self.onEvent)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.show_error(_("Could not start segmentation: ") + str(e))
            self.job = None
            return
        self._started = time.time()
        self._cancelling = False
        self.progressBar.setMaximum(0)  # busy until micd predict reports its first windows
        self.statusLabel.setText(_("Segmenting ") + volume.GetName() + "...")
        self.timer.start()
        self.updateButtons()

    def _askReplace(self, previous):
        """True: replace the earlier result; False: keep it and make a new one; None: do nothing."""
        box = qt.QMessageBox
        answer = box.question(qtsupport.main_window(), _("Replace result?"), _("'") + previous.GetName() + _("' already holds a MICD "
                              "result for this volume. Replace it, with any corrections made in it? (No keeps it and makes a new "
                              "segmentation.)"),
                              box.Yes | box.No | box.Cancel)
        return True if answer == box.Yes else False if answer == box.No else None

    @staticmethod
    def _askText(title, label, text):
        return qt.QInputDialog.getText(qtsupport.main_window(), title, label, qt.QLineEdit.Normal, text)

    def onTick(self):
        """Before the first progress event (start-up, reading the volume): the seconds spent."""
        if self.job is not None and self._started is not None and not self.job.finished and not \
                self.job.progress.started and not self._cancelling:
            self.statusLabel.setText(_("Segmenting... ") + f"{time.time() - self._started:.0f} s")

    def onEvent(self, event):
        """A `progress` event of micd predict: windows done / total and the time left."""
        job = self.job
        if job is None or job.finished or event.get("event") != "progress" or self._cancelling:
            return
        self.progressBar.setMaximum(1000)
        self.progressBar.setValue(int(1000 * job.progress.fraction))
        self.statusLabel.setText(job.progress.status_text(_("Segmenting")))

    def onCancel(self):
        if self.job is not None and not self.job.finished:
            self._cancelling = True
            self.job.request_cancel()
            self.statusLabel.setText(_("Cancelling..."))
        self.updateButtons()

    def onFinished(self, job):
        self.timer.stop()
        self.progressBar.setMaximum(100)
        self.progressBar.setValue(100 if job.state == SUCCEEDED else 0)
        self._cancelling = False
        self.statusLabel.setText(job.message.split("\n")[0] if job.message else job.state)
        if job.state not in (SUCCEEDED, CANCELLED):
            self.show_error(job.message)
        self.updateButtons()
        if self._leaving:
            self._endWorker()

    def appendLog(self, text):
        self.logText.appendPlainText(str(text))

    # --- the scene ----------------------------------------------------------------------------------------------------
    def _running(self):
        return self.job is not None and not self.job.finished

    def _tornDown(self):
        """A panel whose cleanup never ran, being taken apart at interpreter exit before the scene it observes."""
        return "job" not in vars(self)

    def _stopForScene(self, message):
        """The running segmentation's volume is gone: cancel it (nothing is imported) and say why."""
        if not self._running():
            return
        if not self._cancelling:
            self._cancelling = True
            self.job.request_cancel()
        self.statusLabel.setText(message)
        self.appendLog(message)
        self.updateButtons()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAboutToBeRemoved(self, caller, event, node):
        if node is None or caller.IsClosing() or self._tornDown():  # a scene close: onSceneAboutToBeClosed
            return
        if self._running() and getattr(self.job, "volume", None) is node:
            self._stopForScene(_("The volume '") + node.GetName() + _("' was deleted from the scene: the "
                                                                      "segmentation is cancelled."))

    def onSceneAboutToBeClosed(self, caller=None, event=None):
        if not self._tornDown():
            self._stopForScene(_("The scene was closed: the segmentation is cancelled."))

    def onSceneClosed(self, caller=None, event=None):
        if not self._tornDown():
            self.updateButtons()  # the volume selector is empty now

    def updateButtons(self):
        running = self.job is not None and not self.job.finished
        has_model = self.selectedModel() is not None
        self.segmentButton.setEnabled(not running and has_model and self.volumeSelector.currentNode() is not None)
        self.cancelButton.setEnabled(running and not self._cancelling)
        for b in (self.renameButton, self.deleteButton, self.exportButton):
            b.setEnabled(has_model and not running)

    def enter(self):
        """Refresh the models; start the worker now when this session's dependency check already passed (else the
        first Segment click starts it, after the check)."""
        self.refreshModels(select=self.selectedModel().name if self.selectedModel() else None)
        self._leaving = False
        if qtsupport.backend_known_ready(self.logic.launcher):
            self.logic.warm_up()
        self.workerTimer.start()

    def exit(self):
        """Leaving the module ends the worker (its memory goes back); a running segmentation finishes first."""
        self._leaving = True
        if self.job is None or self.job.finished:
            self._endWorker()

    def _endWorker(self):
        self._leaving = False
        self.logic.shutdown_worker()
        self.workerTimer.stop()

    def cleanup(self):
        self.removeObservers()
        self.timer.stop()
        self.workerTimer.stop()
        self.logic.shutdown_worker()

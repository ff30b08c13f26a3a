"""The training workflow of the "Train semi-supervised" panel: labeled cases, unlabeled folders, checks, settings
(SettingsForm: the time budget first, iterations under Advanced) and the run (Train / Cancel / Resume, the plan,
progress with ETA, loss and Dice charts, log). All work is delegated to the logic (`Logic.TrainingLogic`)."""

import os

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from MICDCommon import FAILED, LOST, SUCCEEDED, qtsupport
from MICDCommon.events import TrainingProgress

from .CasePairing import LabelNamesError, no_pairs_reason, pair_scene_cases, summarize_unlabeled_folder
from .Curves import TrainingCurves
from .CurvesView import CurvesView
from .DatasetExport import FileCase, LabeledCase
from .RunDisplay import RunDisplay
from .SettingsForm import SettingsForm

try:
    from slicer.i18n import tr as _
except ImportError:  # headless tests
    def _(text):
        return text

LOG_LINE_LIMIT = 2000


class TrainingPanel(VTKObservationMixin):
    """The sections of the training workflow in `widget`; the run it started or reattached to is `job`.

    Others follow it through two lists of callables: `changeListeners` (no arguments) run after the labeled cases or
    the run's state changed, `trainedListeners` (the new model's name) after a training succeeded.

    It observes the scene (until `cleanup`): a paired volume or segmentation deleted marks its case in the table
    (Check and Train then name it), closing the scene takes the scene's cases out of the table."""

    def __init__(self, logic, show_error, dependency_check=None):
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.show_error = show_error
        # dependency_check(then) -> True when the backend can run now; else False, and then() runs once it can
        self.dependency_check = dependency_check or (lambda then=None: qtsupport.ensure_backend_ready(
            self.logic.launcher, self.appendLog, show_error=self.show_error, then=then))
        self.cases = []
        self.file_labels = {}
        self.unlabeled = []
        self.job = None
        self.starting = None  # a TrainingStart while the cases' files are written, before the run starts
        self.curves = None
        self.report = None
        self.changeListeners = []
        self.trainedListeners = []
        self.widget = qt.QWidget()
        layout = qt.QVBoxLayout(self.widget)
        layout.setContentsMargins(0, 0, 0, 0)
        self._buildCases(layout)
        self._buildUnlabeled(layout)
        self._buildChecks(layout)
        self.form = SettingsForm(layout, self.onCheckDependencies)
        self._buildTraining(layout)
        # every widget exists: connect the edits, then the first refresh
        self.form.connectChanged(self.showPlanPreview)
        self.form.load()
        self.showPlanPreview()
        self.updateButtons()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAboutToBeRemovedEvent, self.onNodeAboutToBeRemoved)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)

    # --- building -------------------------------------------------------------------------------------------------
    def _buildCases(self, layout):
        _box, form = qtsupport.section(_("Labeled cases"), layout)
        self.volumeSelector = qtsupport.node_selector("vtkMRMLScalarVolumeNode")
        form.addRow(_("Volume:"), self.volumeSelector)
        self.segmentationSelector = qtsupport.node_selector("vtkMRMLSegmentationNode")
        form.addRow(_("Segmentation:"), self.segmentationSelector)
        self.addCurrentButton = qtsupport.button(_("Add current"), _("Add the selected volume and segmentation"),
                                                 self.onAddCurrent)
        self.autoPairButton = qtsupport.button(_("Auto-pair scene"), _("Pair every segmentation with its volume (by "
                                               "reference, name or study)"), self.onAutoPair)
        self.addFolderButton = qtsupport.button(_("Add folder..."), _("Image/label files: imagesTr+labelsTr, or "
                                                "X.nii.gz beside X_seg.nii.gz"), self.onAddFolder)
        self.removeCaseButton = qtsupport.button(_("Remove"), _("Remove the selected case"), self.onRemoveCase)
        form.addRow(qtsupport.button_grid([self.addCurrentButton, self.autoPairButton, self.addFolderButton,
                                           self.removeCaseButton], 2))
        self.casesTable = qt.QTableWidget(0, 3)
        self.casesTable.setHorizontalHeaderLabels([_("Volume"), _("Segmentation"), _("Segments")])
        self.casesTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.casesTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.casesTable.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.casesTable.setMaximumHeight(140)
        form.addRow(self.casesTable)

    def _buildUnlabeled(self, layout):
        _box, form = qtsupport.section(_("Unlabeled data"), layout)
        self.unlabeledList = qt.QListWidget()
        self.unlabeledList.setMaximumHeight(90)
        form.addRow(self.unlabeledList)
        self.addUnlabeledButton = qtsupport.button(_("Add folder..."), _("A folder of unlabeled images (NIfTI, NRRD, "
                                                   "MHA, DICOM series)"), self.onAddUnlabeled)
        self.removeUnlabeledButton = qtsupport.button(_("Remove"), _("Remove the selected folder"),
                                                      self.onRemoveUnlabeled)
        form.addRow(qtsupport.button_grid([self.addUnlabeledButton, self.removeUnlabeledButton], 2))

    def _buildChecks(self, layout):
        _box, form = qtsupport.section(_("Checks"), layout)
        self.checkButton = qtsupport.button(_("Check"), _("Check names, label values and geometry before training"),
                                            self.onCheck)
        form.addRow(self.checkButton)
        self.checksLabel = qt.QLabel(_("Add labeled cases, then press Check."))
        self.checksLabel.wordWrap = True
        form.addRow(self.checksLabel)

    def _buildTraining(self, layout):
        _box, form = qtsupport.section(_("Training"), layout)
        self.trainButton = qtsupport.button(_("Train"), _("Export the cases and start training in the background"),
                                            self.startTraining)
        self.cancelButton = qtsupport.button(_("Cancel"), _("Stop training; the last checkpoint is kept"),
                                             self.onCancel)
        self.resumeButton = qtsupport.button(_("Resume"), _("Continue the last stopped run from its checkpoint"),
                                             self.onResume)
        form.addRow(qtsupport.button_grid([self.trainButton, self.cancelButton, self.resumeButton], 3))
        self.planLabel = qt.QLabel("")
        self.planLabel.wordWrap = True
        form.addRow(self.planLabel)
        self.progressBar = qt.QProgressBar()
        form.addRow(self.progressBar)
        self.statusLabel = qt.QLabel(_("Idle"))
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)
        self.curvesView = CurvesView()
        form.addRow(self.curvesView.widget)
        # events only mark the run's display out of date; RunDisplay redraws it at most every REFRESH_MS
        self.runDisplay = RunDisplay(self.progressBar, self.statusLabel, self.curvesView, lambda: self.job,
                                     lambda: self.curves)
        self.showCurvesButton = qtsupport.button(_("Show curves in the view layout"), _("Show the loss and Dice "
                                                 "charts in Slicer's view layout, below the red slice"),
                                                 self.onShowCurves)
        form.addRow(self.showCurvesButton)
        self.logText = qt.QPlainTextEdit()
        self.logText.setReadOnly(True)
        self.logText.setMaximumBlockCount(LOG_LINE_LIMIT)
        form.addRow(self.logText)

    # --- state ----------------------------------------------------------------------------------------------------
    @property
    def running(self):
        return (self.starting is not None and not self.starting.finished) or \
            (self.job is not None and not self.job.finished)

    def settings(self):
        """The settings the panel shows, as a TrainingSettings (SettingsForm.read)."""
        return self.form.read()

    def showPlanPreview(self):
        """Before a run starts: what the settings will do (the run's `start` event then shows the measured plan)."""
        if self.running:
            return  # the run's plan is shown
        settings = self.settings()
        problems = [p for p in settings.problems() if "budget" in p or "teration" in p]
        self.planLabel.setText(problems[0] if problems else settings.plan_preview())

    def appendLog(self, text):
        self.logText.appendPlainText(str(text))

    def updateButtons(self):
        running = self.running
        self.trainButton.setEnabled(not running and bool(self.cases))
        self.trainButton.setToolTip(_("Export the cases and start training in the background") if self.cases
                                    else _("Add at least one labeled case first"))
        self.cancelButton.setEnabled(running)
        self.resumeButton.setEnabled(not running)
        for listener in self.changeListeners:
            listener()

    # --- labeled and unlabeled data ------------------------------------------------------------------------------
    def addCase(self, case):
        if isinstance(case, LabeledCase):
            for index, existing in enumerate(self.cases):
                if not isinstance(existing, LabeledCase):
                    continue
                if existing.missing() and (existing.uses(case.volume) or existing.uses(case.segmentation)):
                    self.cases[index] = case  # a case marked deleted, added again with its data: same row
                    self.refreshCases()
                    return
                if existing.segmentation is case.segmentation:
                    return
        self.cases.append(case)
        self.refreshCases()

    def selectCase(self, volume, segmentation):
        """Show a volume and its segmentation in the selectors, ready for 'Add current'."""
        self.volumeSelector.setCurrentNode(volume)
        self.segmentationSelector.setCurrentNode(segmentation)

    def refreshCases(self):
        self.casesTable.setRowCount(len(self.cases))
        for row, case in enumerate(self.cases):
            missing = []
            if isinstance(case, FileCase):
                cells = [os.path.basename(case.image), os.path.basename(case.label),
                         ", ".join(self.file_labels.values())]
            else:
                missing = case.missing()  # nodes deleted from the scene: the row stays, marked
                cells = [case.node_name(role) + (_(" (deleted)") if role in missing else "")
                         for role in ("volume", "segmentation")]
                cells.append(", ".join(name for _id, name in case.segments()) if case.segmentation is not None
                             else "")
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                if missing:
                    item.setToolTip(_("Deleted from the scene: remove this case, or load the data again and add "
                                      "the case anew."))
                self.casesTable.setItem(row, column, item)
        self.report = None
        self.updateButtons()

    # --- the scene ----------------------------------------------------------------------------------------------------
    def _tornDown(self):
        """A panel whose cleanup never ran, being taken apart at interpreter exit before the scene it observes."""
        return "cases" not in vars(self)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAboutToBeRemoved(self, caller, event, node):
        """A node is being deleted: the cases that use it keep their row, marked, and say so (log and checks)."""
        if node is None or caller.IsClosing() or self._tornDown():  # a close: onSceneClosed empties the table once
            return
        affected = [c for c in self.cases if isinstance(c, LabeledCase) and c.uses(node)]
        if not affected:
            return
        name = node.GetName()
        roles = []
        for case in affected:
            roles += case.forget(node)
        role = _("volume") if "volume" in roles else _("segmentation")
        message = (_("The ") + role + " '" + name + _("' was deleted from the scene: its case (") +
                   ", ".join(c.title for c in affected) + _(") is marked in the table and cannot be trained on. Remove "
                                                             "it, or load the data again and add the case anew."))
        self.appendLog(message)
        self.refreshCases()
        self.checksLabel.setText(message)

    def onSceneClosed(self, caller=None, event=None):
        """The scene was closed: its cases go from the table (file cases are not the scene's: they stay)."""
        if self._tornDown():
            return
        scene_cases = [c for c in self.cases if isinstance(c, LabeledCase)]
        if not scene_cases:
            return
        self.cases[:] = [c for c in self.cases if not isinstance(c, LabeledCase)]
        message = _("The scene was closed: its labeled cases were taken out of the table (") + \
            str(len(scene_cases)) + ")."
        self.appendLog(message)
        self.refreshCases()
        self.checksLabel.setText(message)

    def onAddCurrent(self):
        volume, segmentation = self.volumeSelector.currentNode(), self.segmentationSelector.currentNode()
        if volume is None or segmentation is None:
            self.show_error(_("Select a volume and its segmentation first."))
            return
        self.addCase(LabeledCase(volume, segmentation))

    def onAutoPair(self):
        pairs, unpaired = pair_scene_cases(slicer.mrmlScene)
        for volume, segmentation in pairs:
            self.addCase(LabeledCase(volume, segmentation))
        if unpaired:
            self.appendLog(_("No volume found for: ") + ", ".join(unpaired) + _(" (add them with 'Add current')"))

    def onAddFolder(self):
        folder = qt.QFileDialog.getExistingDirectory(qtsupport.main_window(), _("Folder of labeled image/label files"))
        if not folder:
            return
        try:
            cases, labels, unpaired = self.logic.cases_from_folder(folder)
        except LabelNamesError as e:
            self.show_error(str(e))
            return
        if not cases:
            self.show_error(_("No image/label pairs found. ") + no_pairs_reason(folder, unpaired))
            return
        self.file_labels.update(labels)
        for case in cases:
            self.addCase(case)
        if unpaired:
            self.appendLog(_("Images without a label in the folder: ") + ", ".join(unpaired[:10]))

    def onRemoveCase(self):
        row = self.casesTable.currentRow()
        if 0 <= row < len(self.cases):
            del self.cases[row]
            self.refreshCases()

    def addUnlabeledFolder(self, folder):
        if folder and folder not in self.unlabeled:
            self.unlabeled.append(folder)
        self.refreshUnlabeled()

    def refreshUnlabeled(self):
        self.unlabeledList.clear()
        for folder in self.unlabeled:
            name = os.path.basename(os.path.normpath(folder)) or folder
            self.unlabeledList.addItem(f"{name} - {summarize_unlabeled_folder(folder).text()}")
            self.unlabeledList.item(self.unlabeledList.count - 1).setToolTip(folder)
        self.report = None

    def onAddUnlabeled(self):
        self.addUnlabeledFolder(qt.QFileDialog.getExistingDirectory(qtsupport.main_window(),
                                                                    _("Folder of unlabeled images")))

    def onRemoveUnlabeled(self):
        row = self.unlabeledList.currentRow
        if 0 <= row < len(self.unlabeled):
            del self.unlabeled[row]
            self.refreshUnlabeled()

    # --- checks and training --------------------------------------------------------------------------------------
    def onCheck(self):
        self.report = self.logic.check(self.cases, self.unlabeled, self.settings(), file_labels=self.file_labels)
        labels = ", ".join(f"{v}={n}" for v, n in sorted(self.report.labels.items()))
        self.checksLabel.setText((_("Label values: ") + labels + "\n" if labels else "") + self.report.text())
        self.updateButtons()
        return self.report

    def onCheckDependencies(self):
        self.form.save()
        qtsupport.check_backend(self.logic.launcher, self.appendLog, self.show_error, on_ready=self.onBackendChecked)

    def onBackendChecked(self, report):
        self.appendLog(_("The backend is ready in ") + report.python + "\n" + report.describe())
        self.form.offerDevices(report)

    def startTraining(self, init_from=None):
        """Check, then train on the cases in the background; from the weights of the model `init_from` if given."""
        if self.running:  # e.g. a second click queued while the dependency setup ran
            return
        self.form.save()
        report = self.onCheck()
        if not report.ok:
            self.show_error(_("Training cannot start:\n") + "\n".join(report.errors))
            return
        if not self.dependency_check(then=lambda: self.startTraining(init_from)):
            return
        settings = self.settings()
        self.logText.clear()
        self.curves = self._newCurves(settings.model_name)
        extra = {"init_from": init_from} if init_from is not None else {}
        self.job = None
        try:
            self.starting = self.logic.start_training(
                self.cases, self.unlabeled, settings, file_labels=self.file_labels, on_started=self.onStarted,
                on_failed=self.onStartFailed, on_progress=self.onExportProgress, **extra, **self._callbacks())
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.show_error(_("Could not start training: ") + str(e))
            self.starting = None
        else:
            self.statusLabel.setText(_("Writing the training cases..."))
            self.planLabel.setText(_("Plan: calibrating (a few timed steps)...") if settings.iterations is None
                                   else settings.plan_preview())
            if init_from is not None:
                self.appendLog(_("Continuing from the model '") + init_from.name + "'")
        self.updateButtons()

    def onExportProgress(self, written, count):
        self.statusLabel.setText(_("Writing the training cases: ") + f"{written} / {count}")

    def onStarted(self, job):
        """The cases are written and `micd train` runs: follow it."""
        self.starting = None
        self.job = job
        self.statusLabel.setText(_("Starting the backend..."))
        self.updateButtons()

    def onStartFailed(self, start):
        self.statusLabel.setText(start.message)
        self.appendLog(start.message)
        if start.state == FAILED:
            self.show_error(start.message)
        self.updateButtons()

    def _newCurves(self, name):
        if self.curves is not None:
            self.curves.remove()
        try:
            return TrainingCurves(slicer.mrmlScene, name)
        except Exception:  # noqa: BLE001 - charts are optional (e.g. a scene without plot support)
            return None

    def _callbacks(self):
        return {"on_event": self.onEvent, "on_log": self.appendLog, "on_finished": self.onFinished,
                "curves": self.curves}

    def onCancel(self):
        if self.starting is not None and not self.starting.finished:
            self.starting.request_cancel()
            self.statusLabel.setText(_("Cancelling (before training starts)..."))
        elif self.running:
            self.job.request_cancel()
            self.statusLabel.setText(_("Cancelling (saving a checkpoint)..."))
        self.updateButtons()

    def onResume(self):
        runs = self.logic.resumable_runs()
        if not runs:
            self.show_error(_("There is no stopped run to resume."))
            return
        if not self.dependency_check(then=self.onResume):
            return
        self.curves = self._newCurves(os.path.basename(runs[0]))
        self.job = self.logic.resume(runs[0], **self._callbacks())
        self.job.replay_history()  # the curves and progress of the iterations before the resume, by the next polls
        self.runDisplay.changed(curves=True)
        self.updateButtons()

    def onShowCurves(self):
        if self.curves is None:
            self.show_error(_("No training curves yet: start or resume a training first."))
            return
        self.curves.show_in_layout(slicer.mrmlScene)

    def onEvent(self, event):
        """Called for every event of the run (20,000 when re-entering a long run): only the plan is shown at once;
        the progress and charts are redrawn by RunDisplay, at most every REFRESH_MS."""
        kind = event.get("event")
        if kind == "start":
            self.planLabel.setText((self.job.progress if self.job is not None else TrainingProgress()).plan_text())
        self.runDisplay.changed(curves=kind in ("iteration", "validation"))

    def onFinished(self, job):
        self.runDisplay.changed()  # the last progress and charts (not the status: this says how it ended)
        self.statusLabel.setText(f"{job.state}: {job.message}" if job.message else job.state)
        self.updateButtons()
        if job.state == SUCCEEDED:
            model = getattr(job, "model", None)
            for listener in self.trainedListeners:
                listener(model.name if model is not None else None)
        elif job.state in (FAILED, LOST):
            self.show_error(_("Training stopped: ") + (job.message or job.state))

    # --- module life cycle -----------------------------------------------------------------------------------------
    def enter(self):
        """On showing the panel: reattach to a run that is still going (or ended unseen); mention resumable ones."""
        if self.running:
            return
        attach = self.logic.runs_to_attach()
        if attach:
            self.curves = self._newCurves(os.path.basename(attach[0]))
            self.job = self.logic.attach(attach[0], **self._callbacks())
            self.appendLog(_("Reattached to the training in ") + attach[0])
        else:
            resumable = self.logic.resumable_runs()
            if resumable:
                self.statusLabel.setText(_("A run stopped before finishing: ") + os.path.basename(resumable[0]) +
                                         _(". Press Resume to continue it."))
        self.updateButtons()

    def cleanup(self):
        """The module is closing: the training process keeps running; it is reattached on return. The scene is no
        longer observed (a new panel observes it). Cases still being written are not trained on: that start is
        cancelled (its run folder removed)."""
        self.removeObservers()
        if self.starting is not None and not self.starting.finished:
            self.starting.abandon()
        self.form.save()

"""The "Train semi-supervised" panel, built in code: labeled cases, unlabeled folders, checks, settings (the time
budget first; iterations under Advanced), the training section (Train / Cancel / Resume, the plan, progress with
ETA, loss and Dice charts, log) and the annotation loop (Suggest next cases, load one to correct, Continue from
model). All work is delegated to the logic (`Logic.TrainingLogic`), which the module passes in; tests pass a mock."""

import os

import qt
import slicer

from MICDCommon import FAILED, LOST, SUCCEEDED, qtsupport
from MICDCommon.events import TrainingProgress

from .CasePairing import LabelNamesError, no_pairs_reason, pair_scene_cases, summarize_unlabeled_folder
from .Curves import TrainingCurves
from .CurvesView import CurvesView
from .DatasetExport import FileCase, LabeledCase
from .Parameters import ADVANCED_OPTIONS, METHOD_TITLES, METHODS, TrainingSettings

try:
    from slicer.i18n import tr as _
except ImportError:  # headless tests
    def _(text):
        return text

SETTINGS_KEY = "MICD/TrainingSettings"
LOG_LINE_LIMIT = 2000
TIME_BUDGETS = ("15m", "30m", "1h", "2h", "4h", "8h")
AUTO_ITERATIONS = 0  # the iterations spin box's special value: planned from the time budget


class TrainingWidget:
    """Owns the panel's widgets; `widget` is what the module adds to its layout."""

    def __init__(self, logic, show_error=None, dependency_check=None):
        self.logic = logic
        self.show_error = show_error or (lambda text: slicer.util.errorDisplay(text))
        self.dependency_check = dependency_check or (
            lambda: qtsupport.ensure_backend_ready(self.logic.launcher, self.appendLog, show_error=self.show_error))
        self.cases = []
        self.file_labels = {}
        self.unlabeled = []
        self.job = None
        self.curves = None
        self.report = None
        self.suggestJob = None
        self.loopModels = []
        self.suggestions = []
        self.widget = qt.QWidget()
        layout = qt.QVBoxLayout(self.widget)
        self._buildCases(layout)
        self._buildUnlabeled(layout)
        self._buildChecks(layout)
        self._buildSettings(layout)
        self._buildTraining(layout)
        self._buildLoop(layout)
        layout.addStretch(1)
        self.loadSettings()
        self.refreshLoopModels()
        self.updateButtons()

    # --- building -------------------------------------------------------------------------------------------------
    def _buildCases(self, layout):
        _box, form = qtsupport.section(_("Labeled cases"), layout)
        self.volumeSelector = slicer.qMRMLNodeComboBox()
        self.volumeSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.volumeSelector.addEnabled = False
        self.volumeSelector.sizeAdjustPolicy = qt.QComboBox.AdjustToMinimumContentsLengthWithIcon
        self.volumeSelector.setMRMLScene(slicer.mrmlScene)
        form.addRow(_("Volume:"), self.volumeSelector)
        self.segmentationSelector = slicer.qMRMLNodeComboBox()
        self.segmentationSelector.nodeTypes = ["vtkMRMLSegmentationNode"]
        self.segmentationSelector.addEnabled = False
        self.segmentationSelector.sizeAdjustPolicy = qt.QComboBox.AdjustToMinimumContentsLengthWithIcon
        self.segmentationSelector.setMRMLScene(slicer.mrmlScene)
        form.addRow(_("Segmentation:"), self.segmentationSelector)
        self.addCurrentButton = qtsupport.button(_("Add current"), _("Add the selected volume and segmentation"),
                                        self.onAddCurrent)
        self.autoPairButton = qtsupport.button(_("Auto-pair scene"), _("Pair every segmentation with its volume (by "
                                                                "reference, name or study)"), self.onAutoPair)
        self.addFolderButton = qtsupport.button(_("Add folder..."), _("Image/label files: imagesTr+labelsTr, or X.nii.gz "
                                                             "beside X_seg.nii.gz"), self.onAddFolder)
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
        self.addUnlabeledButton = qtsupport.button(_("Add folder..."), _("A folder of unlabeled images (NIfTI, NRRD, MHA, "
                                                                "DICOM series)"), self.onAddUnlabeled)
        self.removeUnlabeledButton = qtsupport.button(_("Remove"), _("Remove the selected folder"), self.onRemoveUnlabeled)
        form.addRow(qtsupport.button_grid([self.addUnlabeledButton, self.removeUnlabeledButton], 2))

    def _buildChecks(self, layout):
        _box, form = qtsupport.section(_("Checks"), layout)
        self.checkButton = qtsupport.button(_("Check"), _("Check names, label values and geometry before training"),
                                   self.onCheck)
        form.addRow(self.checkButton)
        self.checksLabel = qt.QLabel(_("Add labeled cases, then press Check."))
        self.checksLabel.wordWrap = True
        form.addRow(self.checksLabel)

    def _buildSettings(self, layout):
        _box, form = qtsupport.section(_("Settings"), layout)
        self.modelNameEdit = qt.QLineEdit("MyModel")
        form.addRow(_("Model name:"), self.modelNameEdit)
        self.timeBudgetCombo = qt.QComboBox()
        self.timeBudgetCombo.editable = True
        self.timeBudgetCombo.addItems(list(TIME_BUDGETS))
        self.timeBudgetCombo.setToolTip(_("How long training may take, start-up and export included, e.g. 45m, 2h, "
                                          "90s or 1h30m: a few timed steps at the start fix the iteration count"))
        self.timeBudgetCombo.connect("editTextChanged(QString)", lambda _text: self.showPlanPreview())
        form.addRow(_("Time budget:"), self.timeBudgetCombo)
        self.patchEdit = qt.QLineEdit("auto")
        self.patchEdit.setToolTip(_("'auto', or D H W in voxels (multiples of 16), e.g. 96 96 96"))
        form.addRow(_("Patch size:"), self.patchEdit)
        self.deviceCombo = qt.QComboBox()
        self.deviceCombo.addItems(["auto", "cpu", "cuda:0"])
        form.addRow(_("Device:"), self.deviceCombo)
        advanced, advancedForm = qtsupport.section(_("Advanced"), layout, collapsed=True)
        self.advancedBox = advanced
        self.methodCombo = qt.QComboBox()
        for method in METHODS:
            self.methodCombo.addItem(METHOD_TITLES[method], method)
        advancedForm.addRow(_("Method:"), self.methodCombo)
        self.iterationsSpin = qt.QSpinBox()
        self.iterationsSpin.setRange(AUTO_ITERATIONS, 1000000)
        self.iterationsSpin.specialValueText = _("auto (time budget)")
        self.iterationsSpin.setToolTip(_("A fixed iteration count wins over the time budget (which then only gives "
                                         "the expected end); auto plans it from the budget"))
        self.iterationsSpin.connect("valueChanged(int)", lambda _value: self.showPlanPreview())
        advancedForm.addRow(_("Iterations:"), self.iterationsSpin)
        self.filtersSpin = qt.QSpinBox()
        self.filtersSpin.setRange(1, 128)
        advancedForm.addRow(_("Network width:"), self.filtersSpin)
        self.seedSpin = qt.QSpinBox()
        self.seedSpin.setRange(0, 1000000)
        advancedForm.addRow(_("Seed:"), self.seedSpin)
        self.checkpointSpin = qt.QSpinBox()
        self.checkpointSpin.setRange(1, 1000000)
        advancedForm.addRow(_("Checkpoint every:"), self.checkpointSpin)
        self.advancedEdits = {}
        for name, (kind, default, help_text) in ADVANCED_OPTIONS.items():
            spin = qt.QDoubleSpinBox() if kind is float else qt.QSpinBox()
            if kind is float:
                spin.decimals = 4
                spin.setRange(0.0, 100.0)
            else:
                spin.setRange(1, 64)
            spin.setValue(default)
            spin.setToolTip(help_text)
            self.advancedEdits[name] = spin
            advancedForm.addRow(f"{name}:", spin)
        self.pythonEdit = qt.QLineEdit(qtsupport.chosen_python() or "")
        self.pythonEdit.setToolTip(_("Python that runs training and segmentation; empty = Slicer's own Python. "
                                     "Use a separate environment for a CUDA build of PyTorch."))
        self.pythonEdit.connect("editingFinished()", lambda: qtsupport.set_chosen_python(self.pythonEdit.text))
        advancedForm.addRow(_("Python interpreter:"), self.pythonEdit)
        self.dependenciesButton = qtsupport.button(_("Check / install dependencies"), _("Check the packages the backend "
                                                                               "needs; install after asking"),
                                          self.onCheckDependencies)
        advancedForm.addRow(self.dependenciesButton)

    def _buildTraining(self, layout):
        _box, form = qtsupport.section(_("Training"), layout)
        self.trainButton = qtsupport.button(_("Train"), _("Export the cases and start training in the background"),
                                   self.onTrain)
        self.cancelButton = qtsupport.button(_("Cancel"), _("Stop training; the last checkpoint is kept"), self.onCancel)
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
        self.showCurvesButton = qtsupport.button(_("Show curves in the view layout"), _("Show the loss and Dice "
                                                 "charts in Slicer's view layout, below the red slice"),
                                                 self.onShowCurves)
        form.addRow(self.showCurvesButton)
        self.logText = qt.QPlainTextEdit()
        self.logText.setReadOnly(True)
        self.logText.setMaximumBlockCount(LOG_LINE_LIMIT)
        form.addRow(self.logText)

    def _buildLoop(self, layout):
        _box, form = qtsupport.section(_("Next cases"), layout)
        self.loopModelCombo = qt.QComboBox()
        self.loopModelCombo.sizeAdjustPolicy = qt.QComboBox.AdjustToMinimumContentsLengthWithIcon
        self.loopModelCombo.setToolTip(_("A trained model from the model folder"))
        self.loopModelCombo.connect("currentIndexChanged(int)", lambda _index: self.updateButtons())
        form.addRow(_("Model:"), self.loopModelCombo)
        self.suggestButton = qtsupport.button(_("Suggest next cases"), _("Rank the unlabeled folders' volumes by how "
                                              "unsure the model is (its two students' disagreement): label the "
                                              "first ones next"), self.onSuggest)
        self.continueButton = qtsupport.button(_("Continue from model"), _("Train on the labeled cases starting from "
                                               "this model's weights (--init-from) instead of from scratch"),
                                               self.onContinue)
        form.addRow(qtsupport.button_grid([self.suggestButton, self.continueButton], 2))
        self.suggestProgress = qt.QProgressBar()
        form.addRow(self.suggestProgress)
        self.suggestStatus = qt.QLabel(_("Rank the unlabeled volumes with a model, then load one to correct."))
        self.suggestStatus.wordWrap = True
        form.addRow(self.suggestStatus)
        self.suggestTable = qt.QTableWidget(0, 3)
        self.suggestTable.setHorizontalHeaderLabels([_("Volume"), _("Score"), _("Least certain")])
        header = self.suggestTable.horizontalHeader()  # the row numbers are the ranks
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(1, qt.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, qt.QHeaderView.ResizeToContents)
        self.suggestTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.suggestTable.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.suggestTable.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.suggestTable.setMaximumHeight(140)
        self.suggestTable.setToolTip(_("Score in [0, 1]: higher = the model is less sure = label it first"))
        self.suggestTable.connect("cellDoubleClicked(int,int)", lambda _row, _column: self.onLoadSuggestion())
        self.suggestTable.connect("itemSelectionChanged()", self.updateButtons)
        form.addRow(self.suggestTable)
        self.loadSuggestionButton = qtsupport.button(_("Load to correct"), _("Load the selected volume with the "
                                                     "model's segmentation: correct it in the Segment Editor, then "
                                                     "add it with 'Add current'"), self.onLoadSuggestion)
        self.cancelSuggestButton = qtsupport.button(_("Stop ranking"), _("Stop micd suggest"), self.onCancelSuggest)
        form.addRow(qtsupport.button_grid([self.loadSuggestionButton, self.cancelSuggestButton], 2))

    # --- settings -------------------------------------------------------------------------------------------------
    def settings(self):
        """The settings shown in the panel as a TrainingSettings (patch 'auto' -> None)."""
        patch_text = self.patchEdit.text.strip().lower()
        patch = None
        if patch_text and patch_text != "auto":
            try:
                patch = tuple(int(v) for v in patch_text.replace(",", " ").replace("x", " ").split())
            except ValueError:
                patch = (0, 0, 0)  # reported by TrainingSettings.problems()
        advanced = {name: spin.value for name, spin in self.advancedEdits.items()
                    if spin.value != ADVANCED_OPTIONS[name][1]}
        iterations = int(self.iterationsSpin.value)
        return TrainingSettings(model_name=self.modelNameEdit.text.strip(),
                                time_budget=self.timeBudgetCombo.currentText.strip(),
                                iterations=None if iterations == AUTO_ITERATIONS else iterations, patch_size=patch, device=self.deviceCombo.currentText,
                                method=self.methodCombo.currentData or "micd", filters=int(self.filtersSpin.value),
                                seed=int(self.seedSpin.value), checkpoint_every=int(self.checkpointSpin.value),
                                advanced=advanced)

    def showSettings(self, s):
        self.modelNameEdit.setText(s.model_name)
        self.timeBudgetCombo.setCurrentText(s.time_budget or "")
        self.iterationsSpin.setValue(AUTO_ITERATIONS if s.iterations is None else int(s.iterations))
        self.patchEdit.setText("auto" if s.patch_size is None else " ".join(str(v) for v in s.patch_size))
        index = self.deviceCombo.findText(s.device)
        if index < 0:
            self.deviceCombo.addItem(s.device)
            index = self.deviceCombo.findText(s.device)
        self.deviceCombo.setCurrentIndex(index)
        self.methodCombo.setCurrentIndex(METHODS.index(s.method) if s.method in METHODS else 0)
        self.filtersSpin.setValue(s.filters)
        self.seedSpin.setValue(s.seed)
        self.checkpointSpin.setValue(s.checkpoint_every)
        for name, spin in self.advancedEdits.items():
            spin.setValue(s.advanced.get(name, ADVANCED_OPTIONS[name][1]))
        self.showPlanPreview()

    def showPlanPreview(self):
        """Before a run starts: what the settings will do (the run's `start` event then shows the measured plan)."""
        if not hasattr(self, "planLabel") or (self.job is not None and not self.job.finished):
            return  # still building the panel, or a run's plan is shown
        settings = self.settings()
        problems = [p for p in settings.problems() if "budget" in p or "teration" in p]
        self.planLabel.setText(problems[0] if problems else settings.plan_preview())

    def loadSettings(self):
        import json

        try:
            stored = json.loads(qt.QSettings().value(SETTINGS_KEY, "") or "{}")
        except (TypeError, ValueError):
            stored = {}
        self.showSettings(TrainingSettings.from_dict(stored) if isinstance(stored, dict) else TrainingSettings())

    def saveSettings(self):
        import json

        qt.QSettings().setValue(SETTINGS_KEY, json.dumps(self.settings().to_dict()))
        qtsupport.set_chosen_python(self.pythonEdit.text)

    # --- labeled and unlabeled data ------------------------------------------------------------------------------
    def addCase(self, case):
        if any(isinstance(c, LabeledCase) and c.segmentation is getattr(case, "segmentation", None)
               for c in self.cases):
            return
        self.cases.append(case)
        self.refreshCases()

    def refreshCases(self):
        self.casesTable.setRowCount(len(self.cases))
        for row, case in enumerate(self.cases):
            if isinstance(case, FileCase):
                cells = [os.path.basename(case.image), os.path.basename(case.label),
                         ", ".join(self.file_labels.values())]
            else:
                cells = [case.volume.GetName(), case.segmentation.GetName(),
                         ", ".join(name for _id, name in case.segments())]
            for column, text in enumerate(cells):
                self.casesTable.setItem(row, column, qt.QTableWidgetItem(text))
        self.report = None
        if self.suggestions:
            self._fillSuggestions()
        self.updateButtons()

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
        self.addUnlabeledFolder(qt.QFileDialog.getExistingDirectory(qtsupport.main_window(), _("Folder of unlabeled images")))

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
        self.saveSettings()
        if self.dependency_check():
            self.appendLog(_("The backend is ready in ") + self.logic.launcher.python)
            self.showDevices()

    def showDevices(self):
        """Offer auto, each GPU the chosen Python sees, and cpu (imports torch there: a few seconds)."""
        from MICDCommon.dependencies import DependencyError, probe

        try:
            report = probe(self.logic.launcher, check_gpus=True)
        except DependencyError as e:
            self.appendLog(str(e))
            return
        current = self.deviceCombo.currentText
        self.deviceCombo.clear()
        self.deviceCombo.addItems(report.device_choices())
        index = self.deviceCombo.findText(current)
        self.deviceCombo.setCurrentIndex(max(index, 0))
        self.appendLog(report.describe())

    def onTrain(self):
        self._startTraining()

    def onContinue(self):
        model = self.selectedLoopModel()
        if model is None:
            self.show_error(_("No model to continue from: train one first (or import one in MICD Segmentation)."))
            return
        self._startTraining(init_from=model)

    def _startTraining(self, init_from=None):
        self.saveSettings()
        report = self.onCheck()
        if not report.ok:
            self.show_error(_("Training cannot start:\n") + "\n".join(report.errors))
            return
        if not self.dependency_check():
            return
        settings = self.settings()
        self.logText.clear()
        self.curves = self._newCurves(settings.model_name)
        extra = {"init_from": init_from} if init_from is not None else {}
        try:
            self.job = self.logic.train(self.cases, self.unlabeled, settings, file_labels=self.file_labels,
                                        **extra, **self._callbacks())
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.show_error(_("Could not start training: ") + str(e))
            self.job = None
        else:
            self.planLabel.setText(_("Plan: calibrating (a few timed steps)...") if settings.iterations is None
                                   else settings.plan_preview())
            if init_from is not None:
                self.appendLog(_("Continuing from the model '") + init_from.name + "'")
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
        if self.job is not None and not self.job.finished:
            self.job.request_cancel()
            self.statusLabel.setText(_("Cancelling (saving a checkpoint)..."))
        self.updateButtons()

    def onResume(self):
        runs = self.logic.resumable_runs()
        if not runs:
            self.show_error(_("There is no stopped run to resume."))
            return
        if not self.dependency_check():
            return
        self.curves = self._newCurves(os.path.basename(runs[0]))
        self.job = self.logic.resume(runs[0], **self._callbacks())
        self._replayHistory(self.job)
        self.updateButtons()

    def _replayHistory(self, job):
        """Show the curves and progress of the iterations before a resume (the resumed job reads only new ones)."""
        from MICDCommon.events import EventTail

        for event in EventTail(os.path.join(job.run_dir, "events.jsonl")).read_new():
            if event.get("event") in ("start", "iteration", "validation", "checkpoint"):
                job.progress.update(event)
                if self.curves is not None:
                    self.curves.add_event(event)
        self.curvesView.show(self.curves)

    def onShowCurves(self):
        if self.curves is None:
            self.show_error(_("No training curves yet: start or resume a training first."))
            return
        self.curves.show_in_layout(slicer.mrmlScene)

    def onEvent(self, event):
        if event.get("event") in ("iteration", "validation"):
            self.curvesView.show(self.curves)
        progress = self.job.progress if self.job is not None else TrainingProgress()
        if event.get("event") == "start":
            self.planLabel.setText(progress.plan_text())
        self.progressBar.setMaximum(1000)
        self.progressBar.setValue(int(1000 * progress.fraction))
        self.statusLabel.setText(progress.status_text())

    def onFinished(self, job):
        self.statusLabel.setText(f"{job.state}: {job.message}" if job.message else job.state)
        self.updateButtons()
        if job.state == SUCCEEDED:
            self.refreshLoopModels(select=job.model.name if getattr(job, "model", None) else None)
        elif job.state in (FAILED, LOST):
            self.show_error(_("Training stopped: ") + (job.message or job.state))

    # --- the annotation loop ---------------------------------------------------------------------------------------
    def refreshLoopModels(self, select=None):
        current = select or (self.selectedLoopModel().name if self.selectedLoopModel() else None)
        self.loopModels = list(self.logic.models())
        self.loopModelCombo.clear()
        for model in self.loopModels:
            dice = f" (Dice {model.mean_dice:.3f})" if model.mean_dice is not None else ""
            self.loopModelCombo.addItem(model.name + dice)
        names = [m.name for m in self.loopModels]
        if names:
            self.loopModelCombo.setCurrentIndex(names.index(current) if current in names else 0)
        self.updateButtons()

    def selectedLoopModel(self):
        index = self.loopModelCombo.currentIndex if hasattr(self, "loopModelCombo") else -1
        return self.loopModels[index] if 0 <= index < len(self.loopModels) else None

    def onSuggest(self):
        model = self.selectedLoopModel()
        if model is None:
            self.show_error(_("No model to rank with: train one first (or import one in MICD Segmentation)."))
            return
        if not self.unlabeled:
            self.show_error(_("Add an unlabeled folder first: its volumes are what gets ranked."))
            return
        if not self.dependency_check():
            return
        try:
            self.suggestJob = self.logic.suggest(model, list(self.unlabeled), device=self.deviceCombo.currentText,
                                                 on_event=self.onSuggestEvent, on_log=self.appendLog,
                                                 on_finished=self.onSuggestFinished)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.show_error(_("Could not rank the unlabeled volumes: ") + str(e))
            self.suggestJob = None
            return
        self.suggestions = []
        self.suggestTable.setRowCount(0)
        self.suggestProgress.setMaximum(0)  # busy until the first progress event
        self.suggestStatus.setText(_("Ranking with '") + model.name + "'...")
        self.updateButtons()

    def onSuggestEvent(self, event):
        job = self.suggestJob
        if job is None or event.get("event") not in ("progress", "scored"):
            return
        self.suggestProgress.setMaximum(1000)
        self.suggestProgress.setValue(int(1000 * job.progress.fraction))
        self.suggestStatus.setText(job.progress.status_text(_("Ranking")))

    def onSuggestFinished(self, job):
        self.suggestProgress.setMaximum(1000)
        self.suggestProgress.setValue(1000 if job.state == SUCCEEDED else 0)
        self.suggestStatus.setText(job.message.split("\n")[0] if job.message else job.state)
        if job.state == SUCCEEDED:
            self.showSuggestions(job.ranking, job.model)
        elif job.state != "cancelled":
            self.show_error(_("Ranking failed: ") + job.message)
        self.updateButtons()

    def showSuggestions(self, ranking, model):
        self.suggestions = [(entry, model) for entry in ranking]
        self._fillSuggestions()
        if ranking:
            self.suggestTable.selectRow(0)

    def _fillSuggestions(self):
        """The ranked volumes; those already among the labeled cases (e.g. a corrected suggestion) are marked."""
        labeled = self.labeledFiles()
        self.suggestTable.setRowCount(len(self.suggestions))
        for row, (entry, model) in enumerate(self.suggestions):
            label = entry.get("least_certain_label")
            name = entry.get("case") or os.path.basename(entry.get("file", ""))
            if os.path.abspath(entry.get("file", "")) in labeled:
                name += _(" (labeled)")
            cells = [name, f"{entry.get('score', 0):.3f}", model.labels.get(int(label), str(label)) if label else "-"]
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(entry.get("file", ""))
                self.suggestTable.setItem(row, column, item)

    def labeledFiles(self):
        """The image files of the labeled cases (a scene volume by the file it was loaded from)."""
        files = set()
        for case in self.cases:
            if isinstance(case, FileCase):
                files.add(case.image)
                continue
            storage = case.volume.GetStorageNode() if case.volume is not None else None
            if storage is not None and storage.GetFileName():
                files.add(os.path.abspath(storage.GetFileName()))
        return files

    def onLoadSuggestion(self):
        row = self.suggestTable.currentRow()
        if not 0 <= row < len(self.suggestions):
            self.show_error(_("Select a ranked volume first."))
            return
        entry, model = self.suggestions[row]
        try:
            volume, segmentation, reused = self.logic.load_suggestion(entry, model)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.show_error(_("Could not load the suggestion: ") + str(e))
            return
        self.volumeSelector.setCurrentNode(volume)
        self.segmentationSelector.setCurrentNode(segmentation)
        self.suggestStatus.setText((_("Already loaded: ") if reused else _("Loaded ")) + segmentation.GetName() +
                                   _(". Correct it in the Segment Editor, then press 'Add current' under Labeled "
                                     "cases and train again (Continue from model)."))

    def onCancelSuggest(self):
        if self.suggestJob is not None and not self.suggestJob.finished:
            self.suggestJob.request_cancel()
            self.suggestStatus.setText(_("Stopping the ranking..."))
        self.updateButtons()

    def appendLog(self, text):
        self.logText.appendPlainText(str(text))

    def updateButtons(self):
        running = self.job is not None and not self.job.finished
        self.trainButton.setEnabled(not running and bool(self.cases))
        self.trainButton.setToolTip(_("Export the cases and start training in the background") if self.cases
                                    else _("Add at least one labeled case first"))
        self.cancelButton.setEnabled(running)
        self.resumeButton.setEnabled(not running)
        if not hasattr(self, "suggestButton"):
            return
        ranking = self.suggestJob is not None and not self.suggestJob.finished
        has_model = self.selectedLoopModel() is not None
        self.suggestButton.setEnabled(has_model and not ranking)
        self.continueButton.setEnabled(has_model and not running and bool(self.cases))
        self.cancelSuggestButton.setEnabled(ranking)
        self.loadSuggestionButton.setEnabled(bool(self.suggestions) and self.suggestTable.currentRow() >= 0)

    # --- module life cycle -----------------------------------------------------------------------------------------
    def enter(self):
        """On showing the panel: reattach to a run that is still going (or ended unseen); mention resumable ones."""
        self.refreshLoopModels()
        if self.job is not None and not self.job.finished:
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
        """The module is closing: the training process keeps running; it is reattached on return."""
        self.saveSettings()

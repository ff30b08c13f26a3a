"""The annotation loop of the "Train semi-supervised" panel, its "Next cases" section: rank the unlabeled volumes by
how unsure a trained model is (`micd suggest` in the background), load one with the model's segmentation to correct
it, and continue training from the model (--init-from)."""

import os

import qt

from MICDCommon import CANCELLED, SUCCEEDED, qtsupport

from .DatasetExport import image_files

try:
    from slicer.i18n import tr as _
except ImportError:  # headless tests
    def _(text):
        return text


class NextCasesPanel:
    """The section in `widget`. It works on the training panel's data (`training`, a TrainingPanel): its unlabeled
    folders and device to rank with, its labeled cases (a ranked volume already among them is marked), its log, and
    its training (Continue from model); `trainingChanged` and `refreshLoopModels` are told when those change."""

    def __init__(self, logic, training, show_error, dependency_check):
        self.logic = logic
        self.training = training
        self.show_error = show_error
        self.dependency_check = dependency_check
        self.suggestJob = None
        self.loopModels = []
        self.suggestions = []  # [(ranking entry, the model that ranked it)], in rank order
        self.widget = qt.QWidget()
        layout = qt.QVBoxLayout(self.widget)
        layout.setContentsMargins(0, 0, 0, 0)
        self._build(layout)
        # every widget exists: connect the selections, then the first refresh
        self.loopModelCombo.connect("currentIndexChanged(int)", lambda _index: self.updateButtons())
        self.suggestTable.connect("cellDoubleClicked(int,int)", lambda _row, _column: self.onLoadSuggestion())
        self.suggestTable.connect("itemSelectionChanged()", self.updateButtons)
        self.refreshLoopModels()

    def _build(self, layout):
        _box, form = qtsupport.section(_("Next cases"), layout)
        self.loopModelCombo = qt.QComboBox()
        self.loopModelCombo.sizeAdjustPolicy = qt.QComboBox.AdjustToMinimumContentsLengthWithIcon
        self.loopModelCombo.setToolTip(_("A trained model from the model folder"))
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
        form.addRow(self.suggestTable)
        self.loadSuggestionButton = qtsupport.button(_("Load to correct"), _("Load the selected volume with the "
                                                     "model's segmentation: correct it in the Segment Editor, then "
                                                     "add it with 'Add current'"), self.onLoadSuggestion)
        self.cancelSuggestButton = qtsupport.button(_("Stop ranking"), _("Stop micd suggest"), self.onCancelSuggest)
        form.addRow(qtsupport.button_grid([self.loadSuggestionButton, self.cancelSuggestButton], 2))

    # --- models ---------------------------------------------------------------------------------------------------
    def refreshLoopModels(self, select=None):
        """List the registered models; select the one named `select` (else keep the current one, else the first)."""
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
        index = self.loopModelCombo.currentIndex
        return self.loopModels[index] if 0 <= index < len(self.loopModels) else None

    def onContinue(self):
        model = self.selectedLoopModel()
        if model is None:
            self.show_error(_("No model to continue from: train one first (or import one in MICD Segmentation)."))
            return
        self.training.startTraining(init_from=model)

    # --- ranking --------------------------------------------------------------------------------------------------
    def onSuggest(self):
        model = self.selectedLoopModel()
        if model is None:
            self.show_error(_("No model to rank with: train one first (or import one in MICD Segmentation)."))
            return
        if not self.training.unlabeled:
            self.show_error(_("Add an unlabeled folder first: its volumes are what gets ranked."))
            return
        if not self.dependency_check(then=self.onSuggest):
            return
        try:
            self.suggestJob = self.logic.suggest(model, list(self.training.unlabeled),
                                                 device=self.training.settings().device,
                                                 on_event=self.onSuggestEvent, on_log=self.training.appendLog,
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
        elif job.state != CANCELLED:
            self.show_error(_("Ranking failed: ") + job.message)
        self.updateButtons()

    def onCancelSuggest(self):
        if self.suggestJob is not None and not self.suggestJob.finished:
            self.suggestJob.request_cancel()
            self.suggestStatus.setText(_("Stopping the ranking..."))
        self.updateButtons()

    # --- the ranked volumes ---------------------------------------------------------------------------------------
    def showSuggestions(self, ranking, model):
        self.suggestions = [(entry, model) for entry in ranking]
        self._fillSuggestions()
        if ranking:
            self.suggestTable.selectRow(0)

    def _fillSuggestions(self):
        """The ranked volumes; those already among the labeled cases (e.g. a corrected suggestion) are marked."""
        labeled = image_files(self.training.cases)
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
        self.training.selectCase(volume, segmentation)
        self.suggestStatus.setText((_("Already loaded: ") if reused else _("Loaded ")) + segmentation.GetName() +
                                   _(". Correct it in the Segment Editor, then press 'Add current' under Labeled "
                                     "cases and train again (Continue from model)."))

    # --- following the training panel -----------------------------------------------------------------------------
    def trainingChanged(self):
        """The labeled cases or the training run changed: mark the ranked volumes now labeled, update the buttons."""
        if self.suggestions:
            self._fillSuggestions()
        self.updateButtons()

    def updateButtons(self):
        ranking = self.suggestJob is not None and not self.suggestJob.finished
        has_model = self.selectedLoopModel() is not None
        self.suggestButton.setEnabled(has_model and not ranking)
        self.continueButton.setEnabled(has_model and not self.training.running and bool(self.training.cases))
        self.cancelSuggestButton.setEnabled(ranking)
        self.loadSuggestionButton.setEnabled(bool(self.suggestions) and self.suggestTable.currentRow() >= 0)

"""The training panel's Settings and Advanced sections: the one place where widgets and TrainingSettings meet.

`read()` turns the widgets into a TrainingSettings and `show()` puts one into the widgets; the widgets are built
empty and get their first values from `show()` (the stored settings, or TrainingSettings' defaults, which are the
backend's), so every default is written once, in Parameters.py / the backend contract. Slicer's
parameterNodeWrapper is not used: these settings belong to the user, not to a scene (they are kept in QSettings),
and it is not available in the test harness, which runs this file over real Qt widgets without Slicer."""

import json

import qt

from MICDCommon import qtsupport

from .BenchmarkAdvice import advice_summary, advice_text, load_rows
from .Parameters import ADVANCED_OPTIONS, METHOD_TITLES, METHODS, TrainingSettings

try:
    from slicer.i18n import tr as _
except ImportError:  # headless tests
    def _(text):
        return text

SETTINGS_KEY = "MICD/TrainingSettings"
TIME_BUDGETS = ("15m", "30m", "1h", "2h", "4h", "8h")
# Until a probe of the backend's Python (Check / install dependencies) lists its GPUs: no GPU is offered that may
# not exist (a stored choice such as cuda:0 is still shown, as the user made it).
DEVICE_CHOICES = ("auto", "cpu")
AUTO_ITERATIONS = 0  # the iterations spin box's special value: planned from the time budget
AUTO_PATCH = "auto"


class SettingsForm:
    """Adds the Settings section and the collapsed Advanced section to `layout`. `onCheckDependencies` runs when
    the user asks to check the backend's packages."""

    def __init__(self, layout, onCheckDependencies):
        _box, form = qtsupport.section(_("Settings"), layout)
        self.modelNameEdit = qt.QLineEdit()
        form.addRow(_("Model name:"), self.modelNameEdit)
        self.timeBudgetCombo = qt.QComboBox()
        self.timeBudgetCombo.editable = True
        self.timeBudgetCombo.addItems(list(TIME_BUDGETS))
        self.timeBudgetCombo.setToolTip(_("How long training may take, start-up and export included, e.g. 45m, 2h, "
                                          "90s or 1h30m: a few timed steps at the start fix the iteration count"))
        form.addRow(_("Time budget:"), self.timeBudgetCombo)
        self.patchEdit = qt.QLineEdit()
        self.patchEdit.setToolTip(_("'auto', or D H W in voxels (multiples of 16), e.g. 96 96 96"))
        form.addRow(_("Patch size:"), self.patchEdit)
        self.deviceCombo = qt.QComboBox()
        self.deviceCombo.addItems(list(DEVICE_CHOICES))
        form.addRow(_("Device:"), self.deviceCombo)
        # what unlabeled data brought at equal time on our benchmarks (issue 32): no promise the data do not show
        rows = load_rows()
        self.adviceLabel = qt.QLabel(advice_summary(rows))
        self.adviceLabel.wordWrap = True
        self.adviceLabel.setToolTip(advice_text(rows))
        form.addRow(self.adviceLabel)
        if not self.adviceLabel.text:
            self.adviceLabel.hide()

        self.advancedBox, advanced = qtsupport.section(_("Advanced"), layout, collapsed=True)
        self.methodCombo = qt.QComboBox()
        for method in METHODS:
            self.methodCombo.addItem(METHOD_TITLES.get(method, method), method)
        advanced.addRow(_("Method:"), self.methodCombo)
        self.iterationsSpin = _spin(AUTO_ITERATIONS, 1000000)
        self.iterationsSpin.specialValueText = _("auto (time budget)")
        self.iterationsSpin.setToolTip(_("A fixed iteration count wins over the time budget (which then only gives "
                                         "the expected end); auto plans it from the budget"))
        advanced.addRow(_("Iterations:"), self.iterationsSpin)
        self.filtersSpin = _spin(1, 128)
        advanced.addRow(_("Network width:"), self.filtersSpin)
        self.seedSpin = _spin(0, 1000000)
        advanced.addRow(_("Seed:"), self.seedSpin)
        self.checkpointSpin = _spin(1, 1000000)
        advanced.addRow(_("Checkpoint every:"), self.checkpointSpin)
        self.advancedEdits = {}
        for name, (kind, _default, help_text) in ADVANCED_OPTIONS.items():
            spin = _spin(1, 64) if kind is int else qt.QDoubleSpinBox()
            if kind is float:
                spin.decimals = 4
                spin.setRange(0.0, 100.0)
            spin.setToolTip(help_text)
            self.advancedEdits[name] = spin
            advanced.addRow(f"{name}:", spin)
        self.pythonEdit = qt.QLineEdit(qtsupport.chosen_python() or "")
        self.pythonEdit.setToolTip(_("Python that runs training and segmentation; empty = Slicer's own Python. "
                                     "Use a separate environment for a CUDA build of PyTorch."))
        self.pythonEdit.connect("editingFinished()", lambda: qtsupport.set_chosen_python(self.pythonEdit.text))
        advanced.addRow(_("Python interpreter:"), self.pythonEdit)
        self.dependenciesButton = qtsupport.button(_("Check / install dependencies"), _(
            "Check the packages the backend needs; install after asking"), onCheckDependencies)
        advanced.addRow(self.dependenciesButton)

    def connectChanged(self, slot):
        """Call `slot()` when an edit changes what the run will do (its time budget or iteration count)."""
        self.timeBudgetCombo.connect("editTextChanged(QString)", lambda _text: slot())
        self.iterationsSpin.connect("valueChanged(int)", lambda _value: slot())

    # --- widgets <-> TrainingSettings -----------------------------------------------------------------------------
    def read(self):
        """The settings the widgets show (patch 'auto' and iterations 'auto' -> None)."""
        patch_text = self.patchEdit.text.strip().lower()
        patch = None
        if patch_text and patch_text != AUTO_PATCH:
            try:
                patch = tuple(int(v) for v in patch_text.replace(",", " ").replace("x", " ").split())
            except ValueError:
                patch = (0, 0, 0)  # reported by TrainingSettings.problems()
        iterations = int(self.iterationsSpin.value)
        return TrainingSettings(
            model_name=self.modelNameEdit.text.strip(), time_budget=self.timeBudgetCombo.currentText.strip(),
            iterations=None if iterations == AUTO_ITERATIONS else iterations, patch_size=patch,
            device=self.deviceCombo.currentText, method=self.methodCombo.currentData or TrainingSettings.method,
            filters=int(self.filtersSpin.value), seed=int(self.seedSpin.value),
            checkpoint_every=int(self.checkpointSpin.value),
            advanced={name: spin.value for name, spin in self.advancedEdits.items()
                      if spin.value != ADVANCED_OPTIONS[name][1]})

    def show(self, s):
        """Put `s` into the widgets (an advanced option it does not set shows the backend's default)."""
        self.modelNameEdit.setText(s.model_name)
        self.timeBudgetCombo.setCurrentText(s.time_budget or "")
        self.iterationsSpin.setValue(AUTO_ITERATIONS if s.iterations is None else int(s.iterations))
        self.patchEdit.setText(AUTO_PATCH if s.patch_size is None else " ".join(str(v) for v in s.patch_size))
        if self.deviceCombo.findText(s.device) < 0:
            self.deviceCombo.addItem(s.device)
        self.deviceCombo.setCurrentIndex(self.deviceCombo.findText(s.device))
        self.methodCombo.setCurrentIndex(max(self.methodCombo.findData(s.method), 0))
        self.filtersSpin.setValue(s.filters)
        self.seedSpin.setValue(s.seed)
        self.checkpointSpin.setValue(s.checkpoint_every)
        for name, spin in self.advancedEdits.items():
            spin.setValue(s.advanced.get(name, ADVANCED_OPTIONS[name][1]))

    # --- kept between sessions ------------------------------------------------------------------------------------
    def load(self):
        """Show the settings stored by `save()` (TrainingSettings' defaults when there are none)."""
        try:
            stored = json.loads(qt.QSettings().value(SETTINGS_KEY, "") or "{}")
        except (TypeError, ValueError):
            stored = {}
        self.show(TrainingSettings.from_dict(stored) if isinstance(stored, dict) else TrainingSettings())

    def save(self):
        qt.QSettings().setValue(SETTINGS_KEY, json.dumps(self.read().to_dict()))
        qtsupport.set_chosen_python(self.pythonEdit.text)

    def offerDevices(self, report):
        """Offer the devices a probe's EnvironmentReport found (auto, each GPU, cpu); the current choice stays if it
        is among them, else auto."""
        current = self.deviceCombo.currentText
        self.deviceCombo.clear()
        self.deviceCombo.addItems(report.device_choices())
        self.deviceCombo.setCurrentIndex(max(self.deviceCombo.findText(current), 0))


def _spin(low, high):
    spin = qt.QSpinBox()
    spin.setRange(low, high)
    return spin

"""The "Train semi-supervised" panel, built in code from two parts: the training workflow (TrainingPanel: labeled
cases, unlabeled folders, checks, settings, the run) and the annotation loop below it (NextCasesPanel: suggest the
next cases to label, load one to correct, continue from a model). All work is delegated to the logic
(`Logic.TrainingLogic`), which the module passes in; tests pass a mock."""

import qt
import slicer

from .NextCasesPanel import NextCasesPanel
from .SettingsForm import SETTINGS_KEY  # noqa: F401 - where the panel keeps its settings, for tests and scripts
from .TrainingPanel import TrainingPanel


class TrainingWidget:
    """Builds both parts and connects them; `widget` is what the module adds to its layout."""

    def __init__(self, logic, show_error=None, dependency_check=None):
        self.logic = logic
        show_error = show_error or (lambda text: slicer.util.errorDisplay(text))
        self.training = TrainingPanel(logic, show_error, dependency_check)
        self.nextCases = NextCasesPanel(logic, self.training, show_error, self.training.dependency_check)
        self.training.changeListeners.append(self.nextCases.trainingChanged)
        self.training.trainedListeners.append(lambda name: self.nextCases.refreshLoopModels(select=name))
        self.widget = qt.QWidget()
        layout = qt.QVBoxLayout(self.widget)
        layout.addWidget(self.training.widget)
        layout.addWidget(self.nextCases.widget)
        layout.addStretch(1)

    def enter(self):
        """On showing the panel: list the models anew; reattach to a run still going (or ended unseen)."""
        self.nextCases.refreshLoopModels()
        self.training.enter()

    def exit(self):
        """Leaving the module: a training keeps running and the panel keeps following it."""

    def cleanup(self):
        """The module is closing: a training keeps running; it is reattached on return."""
        self.training.cleanup()

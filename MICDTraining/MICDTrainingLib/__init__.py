"""The MICDTraining module's logic (Logic, DatasetExport, CasePairing, Parameters, Curves: slicer/vtk/numpy only)
and its panel (Widget: a TrainingPanel, whose settings are a SettingsForm, and a NextCasesPanel; CurvesView)."""

"""The MICDSegmentation module's logic (Logic, ResultImport, Parameters: slicer/vtk/numpy only) and its panel
(Widget)."""

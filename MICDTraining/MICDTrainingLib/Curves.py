"""Loss and validation-Dice curves as MRML table + plot nodes, updated from progress events (Slicer shows the
charts in a plot view; the tables can be saved or inspected like any table)."""

import math

import slicer
import vtk

ITERATION = "iteration"
# One colour per series of a chart, in the order the series appear (the charts in the panel use the same).
SERIES_COLORS = [(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
                 (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81)]


def series_color(index):
    return SERIES_COLORS[index % len(SERIES_COLORS)]


# A view layout with the red slice above the loss and Dice charts side by side (registered on first use).
LAYOUT_ID = 5701
PLOT_VIEWS = ("MICDLoss", "MICDDice")
LAYOUT = ('<layout type="vertical" split="true">'
          '<item splitSize="500"><view class="vtkMRMLSliceNode" singletontag="Red">'
          '<property name="orientation" action="default">Axial</property>'
          '<property name="viewlabel" action="default">R</property>'
          '<property name="viewcolor" action="default">#F34A33</property></view></item>'
          '<item splitSize="500"><layout type="horizontal">' +
          "".join(f'<item><view class="vtkMRMLPlotViewNode" singletontag="{tag}">'
                  f'<property name="viewlabel" action="default">{tag[4]}</property></view></item>'
                  for tag in PLOT_VIEWS) +
          '</layout></item></layout>')


class CurveTable:
    """A table node with an iteration column and one float column per series; one plot series per column."""

    def __init__(self, scene, name, y_title):
        self.scene = scene
        self.title, self.y_title = name, y_title
        self.table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
        self.chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        self.chart_node.SetTitle(name)
        self.chart_node.SetXAxisTitle("Iteration")
        self.chart_node.SetYAxisTitle(y_title)
        self._columns = {}
        self._add_column(ITERATION)

    def _add_column(self, column_name):
        array = vtk.vtkFloatArray()
        array.SetName(column_name)
        rows = self.table_node.GetTable().GetNumberOfRows()
        for _ in range(rows):
            array.InsertNextValue(math.nan)
        self.table_node.GetTable().AddColumn(array)
        self._columns[column_name] = array
        if column_name != ITERATION:
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{self.chart_node.GetName()} {column_name}")
            series.SetAndObserveTableNodeID(self.table_node.GetID())
            series.SetXColumnName(ITERATION)
            series.SetYColumnName(column_name)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetColor(*series_color(self.chart_node.GetNumberOfPlotSeriesNodes()))
            self.chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
        return array

    def add_row(self, iteration, values):
        for name in values:
            if name not in self._columns:
                self._add_column(name)
        for name, array in self._columns.items():
            value = iteration if name == ITERATION else values.get(name, math.nan)
            array.InsertNextValue(float(value) if isinstance(value, (int, float)) else math.nan)
        self.table_node.GetTable().Modified()
        self.table_node.Modified()

    @property
    def rows(self):
        return self.table_node.GetTable().GetNumberOfRows()

    def column(self, name):
        array = self._columns[name]
        return [array.GetValue(i) for i in range(array.GetNumberOfTuples())]

    def series(self):
        """{column: [(iteration, value)]} without the rows where the column has no value, in column order."""
        x = self.column(ITERATION)
        found = {}
        for name in self._columns:
            if name != ITERATION:
                found[name] = [(i, v) for i, v in zip(x, self.column(name)) if not math.isnan(v)]
        return found

    def remove(self):
        for i in range(self.chart_node.GetNumberOfPlotSeriesNodes()):
            series = self.chart_node.GetNthPlotSeriesNode(i)
            if series is not None:
                self.scene.RemoveNode(series)
        self.scene.RemoveNode(self.chart_node)
        self.scene.RemoveNode(self.table_node)


class TrainingCurves:
    """The two charts of a training run: loss terms per iteration and validation Dice (mean and per label)."""

    def __init__(self, scene, name="MICD"):
        self.loss = CurveTable(scene, f"{name} loss", "Loss")
        self.dice = CurveTable(scene, f"{name} validation Dice", "Dice")

    def add_event(self, event):
        kind = event.get("event")
        if kind == "iteration" and isinstance(event.get("loss"), dict):
            self.loss.add_row(int(event.get("iter", 0)), event["loss"])
        elif kind == "validation":
            values = {"mean": event.get("mean_dice")}
            values.update(event.get("dice") or {})
            self.dice.add_row(int(event.get("iter", 0)), values)

    def show_in_layout(self, scene):
        """Switch the view layout to the red slice above both charts (the layout logic makes the plot views)."""
        layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layout is None:
            raise RuntimeError("the scene has no view layout")
        if not layout.IsLayoutDescription(LAYOUT_ID):
            layout.AddLayoutDescription(LAYOUT_ID, LAYOUT)
        layout.SetViewArrangement(LAYOUT_ID)
        for tag, table in zip(PLOT_VIEWS, (self.loss, self.dice)):
            scene.GetSingletonNode(tag, "vtkMRMLPlotViewNode").SetPlotChartNodeID(table.chart_node.GetID())

    def remove(self):
        self.loss.remove()
        self.dice.remove()

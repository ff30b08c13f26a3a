"""Loss and validation-Dice curves as MRML table + plot nodes, updated from progress events (Slicer shows the
charts in a plot view; the tables can be saved or inspected like any table)."""

import math

import slicer
import vtk

ITERATION = "iteration"


class CurveTable:
    """A table node with an iteration column and one float column per series; one plot series per column."""

    def __init__(self, scene, name, y_title):
        self.scene = scene
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

    def remove(self):
        self.loss.remove()
        self.dice.remove()

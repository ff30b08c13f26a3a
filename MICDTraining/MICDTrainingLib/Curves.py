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


# Rows a chart keeps per table (so per series): a run that logged 20,000 iterations is drawn from at most this many
# (plus its last row). Older rows are thinned evenly (every 2nd, then every 4th... row added); the last row added is
# always kept as it came, so the chart ends on the current loss.
MAX_POINTS = 1000


def _number(value):
    return float(value) if isinstance(value, (int, float)) else math.nan


class CurveTable:
    """A table node with an iteration column and one float column per series; one plot series per column.

    Rows are kept in Python (at most MAX_POINTS, decimated, + the last) and written into the table node by
    `flush()`, once per batch of events rather than once per event (TrainingJob.poll flushes after each poll)."""

    def __init__(self, scene, name, y_title):
        self.scene = scene
        self.title, self.y_title = name, y_title
        self.table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
        self.chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        self.chart_node.SetTitle(name)
        self.chart_node.SetXAxisTitle("Iteration")
        self.chart_node.SetYAxisTitle(y_title)
        self._columns = {}
        self._kept = []  # (iteration, {series: value}): every `_stride`-th row added
        self._stride = 1
        self.added = 0  # rows added in all
        self._last = None
        self._dirty = False
        self._add_column(ITERATION)

    def _add_column(self, column_name):
        array = vtk.vtkFloatArray()
        array.SetName(column_name)
        array.SetNumberOfTuples(self.table_node.GetTable().GetNumberOfRows())
        array.Fill(math.nan)
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
        """O(1) (amortized): the row is kept or not, the table node is written at the next `flush()`."""
        for name in values:
            if name not in self._columns:
                self._add_column(name)
        row = (iteration, values)
        if self.added % self._stride == 0:
            self._kept.append(row)
            if len(self._kept) > MAX_POINTS:
                del self._kept[1::2]  # kept[j] was row j*stride; now row j*2*stride
                self._stride *= 2
        self.added += 1
        self._last = row
        self._dirty = True

    def points(self):
        """The rows a chart shows: the kept ones and the last one added."""
        if self._last is None or (self._kept and self._kept[-1] is self._last):
            return list(self._kept)
        return self._kept + [self._last]

    def flush(self):
        """Write the rows to show into the table node (the plot views' data), if rows were added since."""
        if not self._dirty:
            return
        self._dirty = False
        rows = self.points()
        for name, array in self._columns.items():
            array.SetNumberOfTuples(len(rows))
            if name == ITERATION:
                for i, row in enumerate(rows):
                    array.SetValue(i, _number(row[0]))
            else:
                for i, row in enumerate(rows):
                    array.SetValue(i, _number(row[1].get(name)))
            array.Modified()
        self.table_node.GetTable().Modified()
        self.table_node.Modified()

    @property
    def rows(self):
        self.flush()
        return self.table_node.GetTable().GetNumberOfRows()

    def column(self, name):
        self.flush()
        array = self._columns[name]
        return [array.GetValue(i) for i in range(array.GetNumberOfTuples())]

    def series(self):
        """{column: [(iteration, value)]} of the rows to show, without those where the column has no value, in
        column order."""
        rows = self.points()
        found = {}
        for name in self._columns:
            if name != ITERATION:
                points = found[name] = []
                for iteration, values in rows:
                    value = _number(values.get(name))
                    if not math.isnan(value):
                        points.append((float(iteration), value))
        return found

    def remove(self):
        # collect first: removing a series node also drops it from the chart, which renumbers the others
        chart = self.chart_node
        series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
        for node in series:
            if node is not None:
                self.scene.RemoveNode(node)
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

    def flush(self):
        """Write what was added since into the table nodes (see CurveTable.flush)."""
        self.loss.flush()
        self.dice.flush()

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

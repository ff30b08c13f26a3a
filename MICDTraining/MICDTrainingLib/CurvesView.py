"""The loss and validation-Dice charts inside the panel, drawn with QPainter from the run's curve tables (Curves.py)
into a QLabel each, so both are in view while training runs, whatever the view layout is. Series colours are those
of the MRML plot series."""

import qt

from .Curves import series_color

MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 54, 8, 36, 18


def _color(rgb):
    return qt.QColor(int(rgb[0] * 255), int(rgb[1] * 255), int(rgb[2] * 255))


def _format(value):
    return f"{value:.2g}" if abs(value) < 100 else f"{value:.0f}"


def draw_chart(table, title, width, height, empty_text):
    """A QPixmap with the table's series as lines: title, legend, y range and last iteration."""
    pixmap = qt.QPixmap(width, height)
    pixmap.fill(qt.QColor(255, 255, 255))
    painter = qt.QPainter(pixmap)
    painter.setRenderHint(qt.QPainter.Antialiasing)
    all_series = table.series() if table is not None else {}  # at most Curves.MAX_POINTS + 1 points each
    series = {name: points for name, points in all_series.items() if points}
    painter.setPen(qt.QColor(40, 40, 40))
    painter.drawText(4, 14, title)
    plot = qt.QRectF(MARGIN_LEFT, MARGIN_TOP, width - MARGIN_LEFT - MARGIN_RIGHT, height - MARGIN_TOP - MARGIN_BOTTOM)
    painter.setPen(qt.QColor(160, 160, 160))
    painter.drawRect(plot)
    if not series:
        painter.drawText(plot, qt.Qt.AlignCenter, empty_text)
        painter.end()
        return pixmap
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def point(x, y):
        return (plot.left() + (x - x0) / (x1 - x0) * plot.width(), plot.bottom() - (y - y0) / (y1 - y0) * plot.height())

    painter.setPen(qt.QColor(90, 90, 90))
    text_height = painter.fontMetrics().height() + 2
    for value, top in ((y1, plot.top() - 2), (y0, plot.bottom() - text_height + 2)):
        painter.drawText(qt.QRectF(0, top, MARGIN_LEFT - 4, text_height), qt.Qt.AlignRight | qt.Qt.AlignVCenter,
                         _format(value))
    last = f"iteration {int(x1)}"
    painter.drawText(int(plot.right()) - painter.fontMetrics().horizontalAdvance(last), height - 4, last)
    legend_x = 4
    for index, (name, points) in enumerate(all_series.items()):
        if not points:
            continue
        color = _color(series_color(index))
        painter.setPen(qt.QPen(color, 2))
        path = qt.QPainterPath()  # one path per series: one draw call, joined line segments
        path.moveTo(*point(*points[0]))
        for x, y in points[1:]:
            path.lineTo(*point(x, y))
        painter.drawPath(path)
        painter.fillRect(legend_x, 20, 10, 10, color)
        painter.setPen(qt.QColor(40, 40, 40))
        painter.drawText(legend_x + 13, 30, name)
        legend_x += 20 + painter.fontMetrics().horizontalAdvance(name)
    painter.end()
    return pixmap


class CurvesView:
    """Two charts stacked (loss, then Dice); `show(curves)` redraws them from a TrainingCurves (or None). `drawn`
    counts the redraws (the panel coalesces them: see RunDisplay.refresh)."""

    def __init__(self, width=380, height=140):
        self.width, self.height = width, height
        self.widget = qt.QWidget()
        layout = qt.QVBoxLayout(self.widget)
        layout.setContentsMargins(0, 0, 0, 0)
        self.lossLabel = qt.QLabel()
        self.diceLabel = qt.QLabel()
        for label in (self.lossLabel, self.diceLabel):
            label.setMinimumHeight(height)
            layout.addWidget(label)
        self.drawn = 0
        self.show(None)

    def show(self, curves):
        self.drawn += 1
        self.lossLabel.setPixmap(draw_chart(curves.loss if curves else None, "Loss", self.width, self.height,
                                            "appears when training starts"))
        self.diceLabel.setPixmap(draw_chart(curves.dice if curves else None, "Validation Dice", self.width,
                                            self.height, "appears after the first validation"))

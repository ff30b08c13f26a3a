"""`ctk` for the harness: the CTK widgets the panels use, as real QWidgets with only the properties, signals and
public functions of CTK's headers (Libs/Widgets/ctkCollapsibleButton.h), so a misspelt or missing member fails.

ctkCollapsibleButton: a checkable QAbstractButton whose header toggles the contents (its children, laid out by the
layout set on it) between shown and collapsed."""

import types

from PyQt5 import QtCore, QtWidgets
from PyQt5.QtCore import pyqtProperty, pyqtSignal, pyqtSlot

import pythonqt


class ctkCollapsibleButton(QtWidgets.QAbstractButton):
    contentsCollapsed = pyqtSignal(bool)

    def __init__(self, *args):
        text = args[0] if args and isinstance(args[0], str) else ""
        parent = args[-1] if args and isinstance(args[-1], QtWidgets.QWidget) else None
        super().__init__(parent)
        self._collapsed = False
        self._collapsed_height = 14
        self._flat = False
        self._shape, self._shadow = QtWidgets.QFrame.StyledPanel, QtWidgets.QFrame.Raised
        self._line_width, self._mid_line_width = 1, 0
        self._text_alignment = QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter
        self._indicator_alignment = QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter
        self.setText(text)
        self.setCheckable(True)
        self.setChecked(True)
        self.setSizePolicy(QtWidgets.QSizePolicy.Preferred, QtWidgets.QSizePolicy.Preferred)
        self.toggled.connect(lambda checked: self.setCollapsed(not checked))
        self._apply_margins()

    def _header_height(self):
        return self.fontMetrics().height() + 10

    def _apply_margins(self):
        self.setContentsMargins(6, self._header_height() + 4, 6, 6)

    # properties (all those of the header, no more)
    def collapsed(self):
        return self._collapsed

    @pyqtSlot(bool)
    def setCollapsed(self, collapsed):
        collapsed = bool(collapsed)
        if collapsed == self._collapsed:
            return
        self._collapsed = collapsed
        self.blockSignals(True)
        self.setChecked(not collapsed)
        self.blockSignals(False)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not collapsed)
        self.setMaximumHeight(self._header_height() + 2 if collapsed else 16777215)
        self.updateGeometry()
        self.contentsCollapsed.emit(collapsed)

    collapsed = pyqtProperty(bool, collapsed, setCollapsed, notify=contentsCollapsed)

    def _get_collapsed_height(self):
        return self._collapsed_height

    def setCollapsedHeight(self, height):
        self._collapsed_height = int(height)

    collapsedHeight = pyqtProperty(int, _get_collapsed_height, setCollapsedHeight)

    def isFlat(self):
        return self._flat

    def setFlat(self, flat):
        self._flat = bool(flat)
        self.update()

    flat = pyqtProperty(bool, isFlat, setFlat)

    def contentsFrameShape(self):
        return self._shape

    def setContentsFrameShape(self, shape):
        self._shape = shape

    contentsFrameShape = pyqtProperty(QtWidgets.QFrame.Shape, contentsFrameShape, setContentsFrameShape)

    def contentsFrameShadow(self):
        return self._shadow

    def setContentsFrameShadow(self, shadow):
        self._shadow = shadow

    contentsFrameShadow = pyqtProperty(QtWidgets.QFrame.Shadow, contentsFrameShadow, setContentsFrameShadow)

    def contentsLineWidth(self):
        return self._line_width

    def setContentsLineWidth(self, width):
        self._line_width = int(width)

    contentsLineWidth = pyqtProperty(int, contentsLineWidth, setContentsLineWidth)

    def contentsMidLineWidth(self):
        return self._mid_line_width

    def setContentsMidLineWidth(self, width):
        self._mid_line_width = int(width)

    contentsMidLineWidth = pyqtProperty(int, contentsMidLineWidth, setContentsMidLineWidth)

    def buttonTextAlignment(self):
        return self._text_alignment

    def setButtonTextAlignment(self, alignment):
        self._text_alignment = alignment

    buttonTextAlignment = pyqtProperty(QtCore.Qt.Alignment, buttonTextAlignment, setButtonTextAlignment)

    def indicatorAlignment(self):
        return self._indicator_alignment

    def setIndicatorAlignment(self, alignment):
        self._indicator_alignment = alignment

    indicatorAlignment = pyqtProperty(QtCore.Qt.Alignment, indicatorAlignment, setIndicatorAlignment)

    # Qt overrides: the header is what toggles, and what is painted as a button
    def hitButton(self, pos):
        return pos.y() < self._header_height()

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        return QtCore.QSize(max(hint.width(), 60), self._header_height() + 2) if self._collapsed else hint

    def sizeHint(self):
        if self._collapsed or self.layout() is None:
            return QtCore.QSize(120, self._header_height() + 2)
        return super().sizeHint()

    def paintEvent(self, _event):
        painter = QtWidgets.QStylePainter(self)
        option = QtWidgets.QStyleOptionButton()
        option.initFrom(self)
        option.rect = QtCore.QRect(0, 0, self.width(), self._header_height())
        option.features = QtWidgets.QStyleOptionButton.Flat if self._flat else QtWidgets.QStyleOptionButton.None_
        painter.drawControl(QtWidgets.QStyle.CE_PushButtonBevel, option)
        arrow = QtWidgets.QStyleOption()
        arrow.initFrom(self)
        size = self._header_height() - 12
        arrow.rect = QtCore.QRect(6, (self._header_height() - size) // 2, size, size)
        painter.drawPrimitive(QtWidgets.QStyle.PE_IndicatorArrowRight if self._collapsed
                              else QtWidgets.QStyle.PE_IndicatorArrowDown, arrow)
        text_rect = QtCore.QRect(12 + size, 0, self.width() - 18 - size, self._header_height())
        painter.drawItemText(text_rect, int(self._text_alignment), self.palette(), True, self.text())
        if not self._collapsed:
            frame = QtWidgets.QStyleOptionFrame()
            frame.initFrom(self)
            frame.rect = QtCore.QRect(0, self._header_height(), self.width(), self.height() - self._header_height())
            frame.lineWidth = self._line_width
            frame.frameShape = self._shape
            painter.drawPrimitive(QtWidgets.QStyle.PE_Frame, frame)


CLASSES = (ctkCollapsibleButton,)


def install(sys_modules):
    """Register `ctk` holding only the classes above."""
    module = types.ModuleType("ctk")
    for cls in CLASSES:
        setattr(module, cls.__name__, pythonqt.wrapper_class(cls))
    sys_modules["ctk"] = module
    return module


"""Draws the extension and module icons (128 x 128 PNG) with numpy and VTK's PNG writer.
Run from the repository root: python Resources/make_icons.py"""

import numpy as np
import vtk
from vtk.util import numpy_support

SIZE = 128


def canvas():
    img = np.zeros((SIZE, SIZE, 4), np.uint8)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    disk = (x - 63.5) ** 2 + (y - 63.5) ** 2 <= 60 ** 2
    img[disk] = (36, 52, 71, 255)
    return img, x, y


def ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1


def write(img, path):
    flipped = np.ascontiguousarray(img[::-1])  # VTK images start at the bottom row
    data = vtk.vtkImageData()
    data.SetDimensions(SIZE, SIZE, 1)
    array = numpy_support.numpy_to_vtk(flipped.reshape(-1, 4), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    array.SetNumberOfComponents(4)
    data.GetPointData().SetScalars(array)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(path)
    writer.SetInputData(data)
    writer.Write()


def segmentation_icon():
    img, x, y = canvas()
    img[ellipse(x, y, 64, 64, 44, 36)] = (200, 200, 200, 255)       # the scan
    img[ellipse(x, y, 50, 58, 16, 20)] = (230, 40, 40, 255)          # segment 1
    img[ellipse(x, y, 80, 70, 14, 17)] = (30, 150, 240, 255)         # segment 2
    return img


def training_icon():
    img, x, y = canvas()
    for i, (cx, cy) in enumerate([(40, 46), (64, 40), (88, 46)]):   # a few labeled + many unlabeled scans
        img[ellipse(x, y, cx, cy, 11, 11)] = (230, 40, 40, 255) if i == 0 else (200, 200, 200, 255)
    curve_x = np.arange(26, 104)
    curve_y = (98 - 34 * (1 - np.exp(-(curve_x - 26) / 20.0))).astype(int)  # a learning curve
    for dx in range(-2, 3):
        for cx, cy in zip(curve_x, curve_y):
            img[np.clip(cy + dx, 0, SIZE - 1), cx] = (80, 220, 120, 255)
    return img


def extension_icon():
    img = segmentation_icon()
    _, x, y = canvas()
    ring = ((x - 63.5) ** 2 + (y - 63.5) ** 2 <= 62 ** 2) & ((x - 63.5) ** 2 + (y - 63.5) ** 2 >= 57 ** 2)
    img[ring] = (80, 220, 120, 255)
    return img


if __name__ == "__main__":
    write(training_icon(), "MICDTraining/Resources/Icons/MICDTraining.png")
    write(segmentation_icon(), "MICDSegmentation/Resources/Icons/MICDSegmentation.png")
    write(extension_icon(), "Resources/Icons/MICD.png")

"""MICD: semi-supervised 3D medical image segmentation with masked image consistency and discrepancy learning.

The package never imports Slicer or Qt. Its contracts with other programs are the command line (`micd.cli`), the
progress event stream (`micd.events`), the model folder (`micd.model_package`) and the Python API (`micd.api`).
"""

__version__ = "0.1.0"

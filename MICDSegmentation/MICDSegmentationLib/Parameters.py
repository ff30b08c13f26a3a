"""Segmentation options and their `micd predict` command-line form."""

import re
from dataclasses import dataclass


@dataclass
class SegmentationSettings:
    device: str = "auto"
    uncertainty: bool = False  # also write and load the students' disagreement map
    tta: bool = False  # flip test-time augmentation: slower, slightly smoother

    def problems(self):
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            return [f"Device {self.device!r} must be auto, cpu, cuda or cuda:N."]
        return []

    def request_fields(self):
        """The options of a `predict` request to the worker (`micd serve`), as `micd predict` names them."""
        return {"device": self.device, "tta": bool(self.tta)}

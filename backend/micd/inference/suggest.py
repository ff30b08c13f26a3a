"""Which unlabeled volume to label next: one prediction pass per volume, scored by where the model is unsure.

The score of a volume (all on the network grid, i.e. at the training spacing):

- p_A, p_B: each student's Gaussian-blended softmax (the same windows, overlap and optional flips as `micd
  predict`); p = (p_A + p_B) / 2, the ensemble `micd predict` segments with.
- F, the predicted foreground: voxels where argmax p, argmax p_A or argmax p_B is a foreground label (the union,
  so that a structure only one student sees still counts).
- disagreement = mean over F of ½ Σ_c |p_A,c − p_B,c| (total-variation distance of the two students, in [0, 1]).
- entropy = mean over F of H(p) / ln C (normalised entropy of the ensemble mean, C classes with background, [0, 1]).
- score = (disagreement + entropy) / 2, in [0, 1]; higher = more worth labeling. A volume with no predicted
  foreground scores 1 (the model finds nothing there: its worst case).

Per label l the same means are taken over the voxels where any of the three argmaxes is l, with the predicted voxel
count (argmax p = l) and the Dice between the two students' masks of l. Volumes are ranked by score, highest first,
ties by file path. Nothing random is involved: the same model and input give the same ranking on the same device and
memory plan. The plan (buffer dtype, slabs, window batch; recorded per volume under "plan") changes with free memory
only when a volume's whole grid does not fit the memory target (`memory.py`); `--max-buffer-gb` fixes it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from micd.inference.ensemble import EnsembleProbabilities
from micd.inference.predictor import PredictOptions, prepare_grid
from micd.inference.reduce import label_dtype
from micd.model_package import ModelPackage

SCORE_DEFINITION = ("score = (disagreement + entropy) / 2 over the predicted foreground F (voxels where the ensemble "
                    "or either student predicts a foreground label, on the network grid); disagreement = mean over F "
                    "of the total-variation distance 1/2 sum_c |p_A,c - p_B,c| of the two students' softmax; "
                    "entropy = mean over F of H(p)/ln C of the ensemble mean p = (p_A + p_B)/2; a volume with empty F "
                    "scores 1")
DIGITS = 6  # scores are rounded, so that the JSON of two runs compares equal


class SuggestError(ValueError):
    """The model cannot be used to rank volumes (e.g. it does not hold two students)."""


class PairProbabilities(nn.Module):
    """x (B, 1, D, H, W) -> both students' mean softmax stacked along channels: (B, 2C, D, H, W).

    MONAI blends every channel with the same Gaussian weights, so the first C blended channels are student A's
    blended probabilities, the next C student B's, and their mean is exactly `micd predict`'s ensemble."""

    def __init__(self, nets: Sequence[nn.Module], tta: bool, out_dtype: torch.dtype,
                 amp_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.parts = nn.ModuleList([EnsembleProbabilities([n], tta, out_dtype, amp_dtype) for n in nets])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], 1)


@dataclass
class _Sums:
    voxels: int = 0
    disagreement: float = 0.0
    entropy: float = 0.0


@dataclass
class DisagreementStats:
    """Accumulates the score's sums slab by slab; `reduce` is handed to `segment_grid`."""

    n_classes: int
    foreground: _Sums = field(default_factory=_Sums)
    per_label: Dict[int, _Sums] = field(default_factory=dict)
    predicted: Dict[int, int] = field(default_factory=dict)
    overlap: Dict[int, Tuple[int, int, int]] = field(default_factory=dict)  # |A∩B|, |A|, |B| per label

    def reduce(self, probs: torch.Tensor) -> Tuple[np.ndarray, None]:
        """probs (2C, ...): student A's C channels, then student B's. One class at a time, so that the temporaries
        stay one channel big (float32), as in `reduce.reduce_probabilities`."""
        c = self.n_classes
        small = torch.uint8 if c <= 256 else torch.int32
        la, lb = torch.argmax(probs[:c], 0).to(small), torch.argmax(probs[c:], 0).to(small)
        shape = probs.shape[1:]
        tv = torch.zeros(shape, dtype=torch.float32, device=probs.device)
        ent = torch.zeros_like(tv)
        best = torch.full_like(tv, -1.0)
        lab = torch.zeros(shape, dtype=small, device=probs.device)
        for k in range(c):
            a, b = probs[k].float(), probs[c + k].float()
            tv.add_((a - b).abs_())
            m = a.add_(b).mul_(0.5)  # the ensemble mean of class k
            del b
            ent.sub_(m * torch.log(m.clamp_min(1e-12)))
            upd = m > best  # strict: ties keep the lower class, as torch.argmax does
            lab[upd] = k
            best = torch.where(upd, m, best)
            del m, upd
        del best
        tv.mul_(0.5)
        ent.div_(math.log(c) if c > 1 else 1.0).clamp_(0.0, 1.0)
        self._add(self.foreground, (lab > 0) | (la > 0) | (lb > 0), tv, ent)
        for v in range(1, c):
            a, b = la == v, lb == v
            self._add(self.per_label.setdefault(v, _Sums()), (lab == v) | a | b, tv, ent)
            self.predicted[v] = self.predicted.get(v, 0) + int((lab == v).sum())
            i, na, nb = self.overlap.get(v, (0, 0, 0))
            self.overlap[v] = (i + int((a & b).sum()), na + int(a.sum()), nb + int(b.sum()))
        return lab.cpu().numpy().astype(label_dtype(c), copy=False), None

    @staticmethod
    def _add(s: _Sums, mask: torch.Tensor, tv: torch.Tensor, ent: torch.Tensor) -> None:
        s.voxels += int(mask.sum())
        s.disagreement += float(tv[mask].double().sum())
        s.entropy += float(ent[mask].double().sum())

    def summary(self, names: Dict[int, str], values: Sequence[int]) -> dict:
        """`names` by label value; `values[k]` is the label value of channel k (the model's channel map)."""
        fg = self.foreground
        if fg.voxels:
            d, h = fg.disagreement / fg.voxels, fg.entropy / fg.voxels
            score = (d + h) / 2
        else:
            d = h = None
            score = 1.0
        labels = {}
        for k in range(1, self.n_classes):
            s, v = self.per_label.get(k, _Sums()), int(values[k])
            i, na, nb = self.overlap.get(k, (0, 0, 0))
            labels[str(v)] = {
                "name": names.get(v, str(v)), "predicted_voxels": self.predicted.get(k, 0),
                "disagreement": _r(s.disagreement / s.voxels) if s.voxels else None,
                "entropy": _r(s.entropy / s.voxels) if s.voxels else None,
                "score": _r((s.disagreement + s.entropy) / (2 * s.voxels)) if s.voxels else None,
                "student_dice": _r(2 * i / (na + nb)) if na + nb else None}
        found = [int(values[k]) for k in range(1, self.n_classes) if self.predicted.get(k, 0)]
        ranked = sorted((k for k in labels if labels[k]["score"] is not None),
                        key=lambda k: (-labels[k]["score"], int(k)))
        return {"score": _r(score), "disagreement": _r(d), "entropy": _r(h), "foreground_voxels": fg.voxels,
                "labels_found": found, "least_certain_label": int(ranked[0]) if ranked else None, "labels": labels}


def _r(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(float(v), DIGITS)


def student_branches(package: ModelPackage) -> List[str]:
    names = [b for b in package.default_ensemble if b in package.networks]
    if len(names) != 2:
        raise SuggestError(f"{package.path}: micd suggest compares two students, this model's default ensemble has "
                           f"{len(names)} ({', '.join(names) or 'none'})")
    return names


def score_image(image: sitk.Image, package: ModelPackage, options: Optional[PredictOptions] = None,
                log: Optional[Callable[[dict], None]] = None,
                progress: Optional[Callable[[dict], None]] = None,
                should_stop: Optional[Callable[[], bool]] = None) -> Tuple[dict, sitk.Image]:
    """Score one image (see the module docstring); returns (summary, ensemble label map on the input's grid).
    `log` receives the plan before the windows run, `progress` the windows done as `micd predict` reports them.

    Same steps as `predictor.predict_image` (preprocessing, memory plan, slab-wise sliding windows, geometry
    restore); only the window predictor (both students' probabilities, stacked) and the per-slab reduction differ.
    The memory plan is made for the 2C stacked channels."""
    opts = options or PredictOptions()
    n_classes = package.network_config.out_channels
    run = prepare_grid(image, package, opts, student_branches(package), 2 * n_classes, log)
    stats = DisagreementStats(n_classes)
    predictor = PairProbabilities(run.nets, opts.tta, run.plan.torch_dtype, run.amp)
    labels, _ = run.segment(predictor, 2 * n_classes, opts, reduce=stats.reduce, progress=progress,
                            should_stop=should_stop)
    summary = stats.summary(package.labels, package.channels.values)
    summary["plan"] = {"device": run.plan.compute_device, "buffer_device": run.plan.buffer_device,
                       "dtype": run.plan.dtype, "n_slabs": run.plan.n_slabs, "sw_batch_size": run.sw_batch,
                       "precision": run.info["precision"]}  # what the scores depend on besides model and input
    summary["seconds"] = round(time.time() - run.t0, 2)
    return summary, run.on_input_grid(package.channels.to_values(labels))


def rank(entries: List[dict]) -> List[dict]:
    """Highest score first, ties by file path; adds 1-based `rank`."""
    out = sorted(entries, key=lambda e: (-e["score"], e["file"]))
    return [{"rank": i + 1, **e} for i, e in enumerate(out)]

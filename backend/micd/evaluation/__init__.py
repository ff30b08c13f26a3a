"""Evaluation: Dice, 95% Hausdorff distance (HD95) and average symmetric surface distance (ASD), in millimetres.

Per case and per label, with MONAI's `compute_dice`, `compute_hausdorff_distance(percentile=95)` and
`compute_average_surface_distance(symmetric=True)`, given the voxel spacing. Empty masks are decided here, before
MONAI is called, by these rules (`metrics.EMPTY_RULES`):

- label absent from both prediction and reference: Dice 1.0, HD95 0.0, ASD 0.0 (nothing to find, nothing found);
  counted in the means and in `n_both_empty`;
- label present in only one of them: Dice 0.0 (counted in the mean); HD95 and ASD are undefined: written as
  `null`, left out of the distance means and counted in `n_undefined`.

Summaries (`summary.py`): per label, mean and std (population, ddof=0) over cases; overall, each case's mean over
its labels, then mean and std over cases (distances: mean over the labels where they are defined).
"""

EVALUATION_SCHEMA_VERSION = 1

"""Which stored networks vote: `students` (default ensemble), `teachers`, one branch, or a comma list of branches."""

from __future__ import annotations

from typing import List

from micd.model_package import ModelPackage

BRANCH_CHOICES = ("students", "teachers", "student_a", "student_b")


class BranchError(ValueError):
    """The requested branches are not in the model folder."""


def branch_names(package: ModelPackage, spec: str) -> List[str]:
    """Resolve a `--branches` value to branch names present in the package."""
    spec = (spec or "students").strip()
    have = list(package.networks)
    if spec == "students":
        names = [b for b in package.default_ensemble if b in package.networks]
    elif spec == "teachers":
        names = [b for b in have if b.startswith("teacher")]
        if not names:
            raise BranchError(f"--branches teachers: this model stores no teachers (it has {', '.join(have)}); "
                              "models trained with a teacher-free method (CPS, supervised) ship students only")
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
        missing = [n for n in names if n not in package.networks]
        if missing:
            raise BranchError(f"--branches {spec}: {', '.join(missing)} not in this model (it has {', '.join(have)})")
    if not names:
        raise BranchError(f"--branches {spec}: no networks selected (model has {', '.join(have)})")
    return names

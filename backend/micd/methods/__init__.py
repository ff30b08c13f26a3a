"""Training methods behind one interface (`Method`); adding a peer method is adding one file and one entry here."""

from micd.methods.base import Method, MethodConfig, gaussian_rampup
from micd.methods.cps import CPS
from micd.methods.dhc import DHC
from micd.methods.mean_teacher import MeanTeacher
from micd.methods.micd import MICD
from micd.methods.supervised import Supervised

METHODS = {cls.name: cls for cls in (MICD, Supervised, MeanTeacher, CPS, DHC)}


def build_method(name: str, net_config, num_classes: int, config: MethodConfig) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name](net_config, num_classes, config)


__all__ = ["METHODS", "Method", "MethodConfig", "build_method", "gaussian_rampup"]

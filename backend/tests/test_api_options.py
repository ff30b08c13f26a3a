"""micd.api.train_command against the real `micd train` parser: every option it builds is read back as given."""

from dataclasses import fields

import pytest

from micd.api import train_command
from micd.cli import build_parser
from micd.training.options import TrainOptions, resolve


def parsed(args):
    ns = build_parser().parse_args(args)
    return resolve(ns)


def test_false_reaches_the_trainer_as_no_flag():
    args = train_command("d.json", "out", mask_shared=False, mask_labeled=False)
    assert "--no-mask-shared" in args and "--no-mask-labeled" in args
    o = parsed(args)
    assert o.mask_shared is False and o.mask_labeled is False
    # False overrides a value that a --config file or the resumed run's config would otherwise set
    assert resolve(build_parser().parse_args(args), saved={"mask_shared": True}).mask_shared is False


@pytest.mark.parametrize("name", [f.name for f in fields(TrainOptions) if isinstance(f.default, bool)])
def test_every_switch_round_trips(name):
    default = getattr(TrainOptions(), name)
    o = parsed(train_command("d.json", "out", **{name: not default}))
    assert getattr(o, name) is (not default)


def test_values_round_trip_and_unknown_options_are_refused():
    o = parsed(train_command("d.json", "out", patch_size=(16, 32, 16), beta_max=0.3, method="cps",
                             class_weights="none", iterations=7))
    assert (o.patch_size, o.beta_max, o.method, o.class_weights, o.iterations) == ([16, 32, 16], 0.3, "cps",
                                                                                 "none", 7)
    with pytest.raises(TypeError, match="no option 'no_such_option'"):
        train_command("d.json", "out", no_such_option=3)
    with pytest.raises(TypeError):
        train_command("d.json", "out", iterations=True)

"""micd.api.train_command against the real `micd train` parser: every option it builds is read back as given."""

from dataclasses import fields

import pytest

from micd.api import train_command
from micd.cli import build_parser
from micd.training.options import TrainOptions, changed_on_resume, resolve


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


def test_a_run_saved_before_an_option_resumes_as_it_was_trained():
    """A run saved before --warmup-step existed trained its warm-up with whole MICD steps: resumed, it keeps them
    (and says so if the user asks for the new form), instead of silently changing form at the resume."""
    old_config = {"method": "micd", "warmup_fraction": 0.5, "iterations": 100}  # no warmup_step: written before it
    args = ["train", "--dataset", "d.json", "--out", "out", "--resume"]
    assert resolve(build_parser().parse_args(args), saved=old_config).warmup_step == "full"
    assert resolve(build_parser().parse_args(args)).warmup_step == "supervised"  # a new run: today's default
    asked = resolve(build_parser().parse_args([*args, "--warmup-step", "supervised"]), saved=old_config)
    assert asked.warmup_step == "supervised"
    assert "warmup_step: full -> supervised" in changed_on_resume(old_config, asked)
    assert not [c for c in changed_on_resume(old_config, resolve(build_parser().parse_args(args), saved=old_config))
                if c.startswith("warmup_step")]

"""Stand-ins for the training logic's asynchronous start in panel tests whose logic is a mock."""

from unittest import mock


def starts_at_once(logic, job):
    """Make `logic.start_training` behave as the real one does once the cases are written: it calls
    `on_started(job)` and returns a finished TrainingStart-like object. Returns the mock, for its call_args."""

    def start_training(*_args, on_started=None, **_kwargs):
        start = mock.MagicMock(name="TrainingStart", finished=True, state="succeeded", training=job)
        if on_started is not None:
            on_started(job)
        return start

    logic.start_training.side_effect = start_training
    return logic.start_training

"""Training: the one loop for every method (schedule, mixed precision, validation, checkpoints, resume, signals,
events, distributed set-up)."""

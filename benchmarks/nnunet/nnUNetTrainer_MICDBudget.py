"""nnU-Net's own trainer, trained for a wall-clock budget (issue 32: one row of nnU-Net at the same wait as MICD).

Loaded by nnU-Net from this folder (`nnUNet_extTrainer`), used as `nnUNetv2_train ... -tr nnUNetTrainer_MICDBudget`.
Everything is nnU-Net's (plans, network, augmentation, loss, optimiser, poly schedule) except the length: the budget
in seconds comes from MICD_NNUNET_BUDGET_S and counts from the start of the process, as `micd train --time-budget`
counts start-up. Epochs are 50 iterations (nnU-Net's 250 would leave a 7-minute CPU budget one epoch or none) with 5
validation iterations; after the first epoch the number of epochs is planned from its time, and the poly schedule is
stretched to end with it; the run stops after the planned epoch, or earlier when the next would end past the budget,
and nnU-Net's own end of training writes checkpoint_final.pth."""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET_VARIABLE = "MICD_NNUNET_BUDGET_S"
START_VARIABLE = "MICD_NNUNET_START"  # the wall time the driver started the command (time.time())
FINAL_SAVE_S = 10.0  # kept for nnU-Net's final checkpoint and the shutdown of its data loaders


class BudgetReached(Exception):
    pass


class nnUNetTrainer_MICDBudget(nnUNetTrainer):
    # nnU-Net records its trainers' __init__ parameters by name (to re-create one from a checkpoint): the signature
    # must be nnUNetTrainer's own, without *args or **kwargs.
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ[BUDGET_VARIABLE])
        self.started = float(os.environ.get(START_VARIABLE, time.time()))
        self.num_iterations_per_epoch = 50
        self.num_val_iterations_per_epoch = 5
        self.planned_epochs = None

    def on_epoch_end(self):
        super().on_epoch_end()  # counts the epoch (current_epoch += 1), logs, saves best/latest
        now = time.time()
        left = self.started + self.budget_s - FINAL_SAVE_S - now
        epoch_s = self.logger.get_value("epoch_end_timestamps", step=-1) - \
            self.logger.get_value("epoch_start_timestamps", step=-1)
        if self.planned_epochs is None:
            self.planned_epochs = max(self.current_epoch, self.current_epoch + int(left // max(epoch_s, 1e-6)))
            self.num_epochs = self.planned_epochs
            self.lr_scheduler.max_steps = self.planned_epochs  # the poly schedule ends with the budget
            self.print_to_log_file(f"MICD budget: {self.budget_s:.0f} s, one epoch {epoch_s:.1f} s: "
                                   f"{self.planned_epochs} epochs of {self.num_iterations_per_epoch} iterations")
        if self.current_epoch >= self.planned_epochs or left < epoch_s:
            raise BudgetReached()

    def run_training(self):
        try:
            super().run_training()
        except BudgetReached:
            self.on_train_end()  # nnU-Net's own end: checkpoint_final.pth, data loaders shut down

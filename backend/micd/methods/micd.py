"""MICD (Zhou, Zhang, Li, arXiv 2503.14013): DHC's heterogeneous co-training plus three regularisers on masked inputs.

One iteration (defaults; the alternatives are `MethodConfig` options):
- Eq. 2: x_m = M(r, s) ⊙ x, one block mask per sample shared by both students, labeled and unlabeled alike.
- Eq. 6: L_sup = DiceCE(p_A(x_l), y; W_diff) + DiceCE(p_B(x_l), y; W_dist) on clean labeled patches.
- Eq. 3 (MCPC): CE(p_A(x_m), ŷ_B(x); W_diff) + CE(p_B(x_m), ŷ_A(x); W_dist): each student's masked prediction learns
  the other student's hard pseudo-label on the clean input.
- Eq. 4 (CFC): Σ_k λ_k · symKL(softmax_ch d_A^k(x_m), softmax_ch d_B^k(x_m)) over the four decoder stages.
- Eq. 5 (CMD): CE(p_A(x_m), ŷ_A'(x)) + CE(p_B(x_m), ŷ_B'(x)): each student is anchored to its own EMA teacher.
- Eq. 7: L = L_sup + β(t) (L_cps + L_con + L_dis); Eq. 1 updates the teachers after the optimizer step.

Defaults that differ from a literal transcription of DHC (each measured in benchmarks/, each an option):
- pseudo-labels (and DistDW's class statistics) come from the EMA teachers, dropout off (`pseudo_labels`): MCPC's
  target for student A is teacher B's label, CMD's is teacher A's; no pass beyond the teachers' is needed;
- the background weight is floored at the foreground mean (`class_weights=dhc-bgfloor`);
- masked blocks are filled with the patch's minimum, its background (`mask_fill`), blocks are an eighth of each
  patch axis (`mask_block=0`);
- clean and masked inputs share one forward per student (one DDP forward per backward) but are normalised apart
  (`bn_passes=separate`, see nets.vnet.SplitBatchNorm3d).
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from micd.methods.dhc import DHC
from micd.methods.ema import ema_update, make_teacher
from micd.methods.losses import feature_distance
from micd.methods.masking import apply_mask, block_mask

MCPC_MODES = ("masked_from_clean", "clean_from_masked", "masked_from_masked")
CMD_MODES = ("own_teacher", "cross_teacher", "neg_discrepancy")


class MICD(DHC):
    name = "micd"
    own_defaults = {"class_weights": "dhc-bgfloor", "pseudo_labels": "teacher", "bn_passes": "separate"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.mcpc_mode not in MCPC_MODES:
            raise ValueError(f"mcpc_mode must be one of {MCPC_MODES}")
        if self.cfg.cmd_mode not in CMD_MODES:
            raise ValueError(f"cmd_mode must be one of {CMD_MODES}")
        self.teachers = nn.ModuleDict({"teacher_a": make_teacher(self.students["student_a"]),
                                       "teacher_b": make_teacher(self.students["student_b"])})

    @property
    def _clean_needs_grad(self) -> bool:
        return self.cfg.mcpc_mode == "clean_from_masked" or self.cfg.cfc_inputs == "clean" or self.cfg.keep_clean_cps

    def make_masked(self, x: torch.Tensor, n_l: int, generator: torch.Generator) -> List[torch.Tensor]:
        """Masked inputs for A and B (the same tensor when the mask is shared)."""
        shape = tuple(x.shape[1:])

        def draw(n: int) -> torch.Tensor:
            return block_mask((n, *shape), self.cfg.mask_ratio, self.cfg.mask_block, generator)

        def one() -> torch.Tensor:
            m_l = self.global_draw(draw, n_l)
            if not self.cfg.mask_labeled:
                m_l = torch.ones_like(m_l)
            m = torch.cat([m_l, self.global_draw(draw, x.shape[0] - n_l)]).to(x.device)
            return apply_mask(x, m, self.cfg.mask_fill)
        xa = one()
        return [xa, xa if self.cfg.mask_shared else one()]

    def _forward(self, key: str, clean: torch.Tensor, masked: torch.Tensor):
        """One training forward of a student on [clean; masked] -> (z_clean, z_masked, f_clean, f_masked)."""
        n = clean.shape[0]
        z, f = self.labeled_first_forward(key, torch.cat([clean, masked]), n)
        return z[:n], z[n:], [t[:n] for t in f], [t[n:] for t in f]

    def step(self, x_l, y_l, x_u, beta, generator) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        x = torch.cat([x_l, x_u])
        n_l = x_l.shape[0]
        xm_a, xm_b = self.make_masked(x, n_l, generator)
        clean_grad = self._clean_needs_grad
        clean_in = x if clean_grad else x_l
        za_c, za_m, fa_c, fa_m = self._forward("student_a", clean_in, xm_a)
        zb_c, zb_m, fb_c, fb_m = self._forward("student_b", clean_in, xm_b)

        # Pseudo-label logits on the clean batch (labeled and unlabeled), and the teachers' (dropout off).
        if self.option("pseudo_labels") != "train_pass":
            pa, pb = self.pseudo_logits("student_a", x, None), self.pseudo_logits("student_b", x, None)
        elif clean_grad:
            pa, pb = za_c.detach(), zb_c.detach()
        else:  # DHC's literal form: training-mode logits (dropout on); the unlabeled ones from a no-graph pass
            with torch.no_grad():
                pa = torch.cat([za_c.detach(), self.students["student_a"](x_u)[0]])
                pb = torch.cat([zb_c.detach(), self.students["student_b"](x_u)[0]])
        if self.option("pseudo_labels") == "teacher":  # the same teachers on the same batch (eval mode): reuse them
            ta, tb = pa, pb
        else:
            with torch.no_grad():
                ta = self.teachers["teacher_a"](x, turnoff_drop=True)[0]
                tb = self.teachers["teacher_b"](x, turnoff_drop=True)[0]
        pl = self.pseudo_labels

        w_diff, w_dist = self.class_weights(za_c[:n_l], y_l, pb[n_l:])
        sup = self.dice_ce(za_c[:n_l], y_l, w_diff) + self.dice_ce(zb_c[:n_l], y_l, w_dist)

        k1, k2, k3 = cfg.term_weights
        # A term weighted 0 (an ablation, --term-weights) is not computed: at equal time its step is that much
        # cheaper. It is reported as 0.
        zero = sup.new_zeros(())

        # Eq. 3, MCPC
        if not k1:
            mcpc = zero
        elif cfg.mcpc_mode == "masked_from_clean":
            mcpc = self.ce(za_m, pl(pb), w_diff) + self.ce(zb_m, pl(pa), w_dist)
        elif cfg.mcpc_mode == "clean_from_masked":
            mcpc = self.ce(za_c, pl(zb_m), w_diff) + self.ce(zb_c, pl(za_m), w_dist)
        else:
            mcpc = self.ce(za_m, pl(zb_m), w_diff) + self.ce(zb_m, pl(za_m), w_dist)
        if cfg.keep_clean_cps and k1:
            mcpc = mcpc + self.ce(za_c, pl(pb), w_diff) + self.ce(zb_c, pl(pa), w_dist)

        # Eq. 4, CFC on the four decoder stages
        fa, fb = (fa_m, fb_m) if cfg.cfc_inputs == "masked" else (fa_c, fb_c)
        cfc = (sum(lam * feature_distance(a, b, cfg.cfc_distance) for lam, a, b in zip(cfg.cfc_weights, fa, fb))
               if k2 else zero)

        # Eq. 5, CMD
        wa, wb = (w_diff, w_dist) if cfg.cmd_weighted else (None, None)
        if not k3:
            cmd = zero
        elif cfg.cmd_mode == "own_teacher":
            cmd = self.ce(za_m, pl(ta), wa) + self.ce(zb_m, pl(tb), wb)
        elif cfg.cmd_mode == "cross_teacher":
            cmd = self.ce(za_m, pl(tb), wa) + self.ce(zb_m, pl(ta), wb)
        else:  # bounded push-apart of the two students' masked predictions
            kl = feature_distance(za_m, zb_m, "kl_sym")
            cmd = F.relu(cfg.cmd_margin - kl)

        total = sup + beta * (k1 * mcpc + k2 * cfc + k3 * cmd)
        return {"sup": sup, "mcpc": mcpc, "cfc": cfc, "cmd": cmd, "total": total}

    def after_step(self) -> None:
        a = self.ema_decay()
        ema_update(self.teachers["teacher_a"], self.students["student_a"], a)
        ema_update(self.teachers["teacher_b"], self.students["student_b"], a)
        super().after_step()

    def export_networks(self):
        return {**self.students, **self.teachers}

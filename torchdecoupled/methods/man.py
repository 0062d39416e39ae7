"""MAN: local learning whose auxiliary input passes through an EMA of the next stage's first layer.

Su, Cai, Zhu, He, Xu, Guan, Si. Momentum Auxiliary Network for Supervised Local Learning. ECCV 2024 (oral;
arXiv:2407.05623); reference code github.com/JunhaoSu0/MAN (``networks/resnetInfoPro_MAN.py``).

The "local" schedule family (``methods/local.py``): stage k does F, B, U of batch t-k in tick t. The head
(``heads/man.py``) computes its loss on y = LB_k(h) + EMA_k(h), EMA_k being a no-grad moving average of the
first layer of stage k+1: psi <- m psi + (1 - m) theta_next. So stage k needs stage k+1's first-layer
parameters every step, a message the other local methods do not have: ``param_messages`` sets the schedule's
``params`` flag, after its U of batch b stage k+1 sends ("param", k+1, k, b) and stage k takes it just before
its F of batch b + 2, in the next tick (``schedule.messages_sent`` / ``param_needed``). K = 3, N = 5::

    tick     0          1          2          3          4          5          6
    stage0   F0 B0 U0   F1 B1 U1   F2 B2 U2   F3 B3 U3   F4 B4 U4
    stage1              F0 B0 U0   F1 B1 U1   F2 B2 U2   F3 B3 U3   F4 B4 U4
    stage2                         F0 B0 U0   F1 B1 U1   F2 B2 U2   F3 B3 U3   F4 B4 U4

    param  stage1 U0 (tick 1) -> stage0 F2 (tick 2);  U1 -> F3;  U2 -> F4;  U3, U4: none (no F5, F6)
           stage2 U0 (tick 2) -> stage1 F2 (tick 3);  U1 -> F3;  U2 -> F4

Which version of stage k+1 the EMA of stage k has seen when it forwards batch b (theta^(j): stage k+1's
first layer after j updates, i.e. after its U of batch j-1; psi_0 = theta^(0), the copy the head was built
with)::

    batch b of stage k    0       1       2 and later
    psi it uses           psi_0   psi_0   psi_b = m psi_(b-1) + (1 - m) theta^(b-1)

The reference runs the modules one after another in each step: module i uses psi and then folds in
theta^(b) before the optimizer steps, so its psi for batch b is m psi_(b-1) + (1-m) theta^(b-1) for b >= 1,
the same versions as here. The only difference is batch 1, where the reference folds in theta^(0) = psi_0,
which changes nothing in exact arithmetic; the pipeline skips it (stage k+1's first action, F0, falls in
the tick of stage k's F1, so nothing of stage k+1 can reach that F1). Both engines follow this table: the key is data, the same Worker applies it.

Heads: "man_dgl" (DGL's MLP-SR-aux on y, the default) or "man_infopro" (InfoPro's loss on y, the reference's
setting). The momentum m is the head's (``heads.man.MOMENTUM`` = 0.995, ``HEADS`` variants for others).
"""
from .base import Method, configure
from .local import _checked

MAN = Method("man", "local", paper="Su et al., ECCV 2024, arXiv:2407.05623", head="man_dgl", param_messages=True)
MAN_HEADS = ("man_dgl", "man_infopro")


def make(**opts) -> Method:
    m = _checked(configure(MAN, ("head",), **opts))
    if m.head not in MAN_HEADS and not m.head.startswith("man"):
        raise ValueError(f"method 'man' needs a MAN head that takes the next stage's parameters (got head "
                         f"{m.head!r}; valid: {', '.join(MAN_HEADS)})")
    return m

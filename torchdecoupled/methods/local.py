"""Local learning with auxiliary networks: every stage k < K-1 trains on its own auxiliary loss.

- DGL: Belilovsky, Eickenberg, Oyallon. Decoupled Greedy Learning of CNNs. ICML 2020 (arXiv:1901.08164);
  head "dgl" (MLP-SR-aux).
- InfoPro: Wang, Ni, Song, Yang, Huang. Revisiting Locally Supervised Learning: an Alternative to
  End-to-End Training. ICLR 2021 (arXiv:2101.10832); head "infopro" (reconstruction + SupCon).
- "local": the same with any head (default "linear"); Peng 2021 (NTU FYP, auxiliary network design).

Schedule family "local": stage k does F, B, U of batch t-k in tick t; the activation sent up is detached,
so no gradient crosses a stage boundary and nothing is stale. Stage k's head gets batch b's labels and
input. Heads by name from ``torchdecoupled.heads.HEADS``; your own: add a factory there (see
``torchdecoupled.heads``) and pass its name as ``head=``, or give ``Stage(head=...)`` an AuxHead.
"""
from .base import Method, configure

DGL = Method("dgl", "local", paper="Belilovsky et al., ICML 2020, arXiv:1901.08164", head="dgl")
INFOPRO = Method("infopro", "local", paper="Wang et al., ICLR 2021, arXiv:2101.10832", head="infopro")
LOCAL = Method("local", "local", paper="Peng, NTU final-year project 2021 (auxiliary networks)", head="linear")


def _checked(m: Method) -> Method:
    from ..heads import HEADS
    if m.head not in HEADS:
        raise ValueError(f"unknown head {m.head!r} (valid: {', '.join(sorted(HEADS))}; add your own to "
                         f"torchdecoupled.heads.HEADS)")
    if m.head.startswith("man") and not m.param_messages:  # its EMA would never see the next stage
        raise ValueError(f"head {m.head!r} needs the next stage's parameters every step, which only method 'man' "
                         f"sends: use --method man --head {m.head}")
    return m


def make_dgl(**opts) -> Method:
    return _checked(configure(DGL, ("head",), **opts))


def make_infopro(**opts) -> Method:
    return _checked(configure(INFOPRO, (), **opts))


def make_local(**opts) -> Method:
    return _checked(configure(LOCAL, ("head",), **opts))

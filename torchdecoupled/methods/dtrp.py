"""DTRP: Peng, Xu, Lin, Weng, Yang, Zhuang. Decoupled neural network training with re-computation and
weight prediction. PLOS ONE 2023 (NTU record hdl.handle.net/10356/169712).

FDG's pipeline (order "bf", d_k = 2(K-1-k)) with recomputation, plus:

- weight prediction: the forward of batch b uses w_hat, the stage's predicted weights s = tau updates
  later (``torchdecoupled.predict``: "momentum" by default, "delta", "none");
- gamma, the shrinking factor that plays FDG's beta (stored in ``Method.beta``; pass ``gamma=``);
- batch compensation, our interpretation (the paper's scheme is not public): recomputation makes a stage
  k < K-1 cost F + F + B per tick against F + B for the last stage, so DTRP's default partition is
  ``"flops"``: the exact min-max partition of per-layer forward and backward FLOPs with the recompute
  counted (``torchdecoupled.compensate``). Deterministic, so every process cuts the model alike. An
  explicit ``RunConfig.partition`` (e.g. "params") turns it off; "time" balances measured times instead.
"""
from .base import Method, configure

BASE = Method("dtrp", "decoupled", paper="Peng et al., PLOS ONE 2023", order="bf", activations="recompute",
              predictor="momentum", partition="flops")


def make(**opts) -> Method:
    if opts.get("gamma") is not None:
        if opts.get("beta") is not None and opts["beta"] != opts["gamma"]:
            raise ValueError(f"dtrp: gamma={opts['gamma']} and beta={opts['beta']} are the same factor: pass one")
        opts = {**opts, "beta": opts["gamma"]}
    opts.pop("gamma", None)
    m = configure(BASE, ("beta", "predictor"), **opts)
    from ..predict import PREDICTORS
    if m.predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {m.predictor!r} (valid: {', '.join(sorted(PREDICTORS))})")
    return m

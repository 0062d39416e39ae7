"""What a method is: a schedule family plus the rules a stage applies. One file per method cites its paper."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

ACTIVATIONS = ("stash", "recompute", "reverse")  # "reverse": PETRA, rebuild a reversible stage's input


@dataclass(frozen=True)
class Method:
    name: str
    family: str                    # schedule family: bp, locked, decoupled, local
    paper: str = ""
    order: str = "bf"              # decoupled family only: "bf" (B, U, then F) or "fb"
    activations: str = "stash"     # "stash" the graph and weights, "recompute" at B, or "reverse" (PETRA)
    beta: float = 1.0              # gradient shrinking (FDG beta, DTRP gamma); 1 = off
    accumulate: int = 1            # ADL's M: sum M backwards, then update
    warmup_epochs: float = 0.0     # linear learning-rate warm-up from 0.01 * lr
    predictor: str = "none"        # weight prediction for the forward (DTRP)
    head: str = "linear"           # auxiliary head of local learning
    partition: str = "params"      # default partition when the run names none (DTRP: "flops", batch compensation)
    param_messages: bool = False   # MAN: the next stage's first-layer parameters travel down after every U

    def describe(self) -> str:
        opts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                if f.name not in ("name", "paper", "family", "param_messages") and getattr(self, f.name) != f.default]
        return f"{self.name}({', '.join(opts)})" if opts else self.name


def configure(base: Method, allowed: tuple[str, ...], **opts) -> Method:
    """Apply user options to a method's defaults; an option the method does not take is an error."""
    opts = {k: v for k, v in opts.items() if v is not None}
    bad = sorted(set(opts) - set(allowed))
    if bad:
        valid = ", ".join(allowed) or "none"
        raise ValueError(f"method {base.name!r} takes no option {bad[0]!r} (its options: {valid})")
    m = replace(base, **opts)
    if not 0.0 < m.beta <= 1.0:
        raise ValueError(f"beta/gamma must be in (0, 1], got {m.beta} (the FDG paper uses 0.2-0.8; 1 = off)")
    if m.accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {m.accumulate}")
    if m.accumulate > 4096:  # planning a stage's weight versions takes time in proportion to it
        raise ValueError(f"accumulate must be at most 4096 backwards per update, got {m.accumulate}")
    if m.order not in ("bf", "fb"):
        raise ValueError(f"unknown order {m.order!r} (valid: bf, fb)")
    if not 0 <= m.warmup_epochs < float("inf"):
        raise ValueError(f"warmup must be a finite number >= 0 of epochs, got {m.warmup_epochs}")
    if m.activations not in ACTIVATIONS:
        raise ValueError(f"unknown activations {m.activations!r} (valid: {', '.join(ACTIVATIONS)})")
    return m

"""Worked examples of the planner (predictions, nothing is run on a GPU): WRN-28-10 and ResNet-1202 on CIFAR-10,
batch 128, FDG on K = 2, 3, 4, 8 GPUs over NVLink, PCIe and 10 GbE, next to the FDG paper's Table 6.

Costs are derived from FLOPs (``torchdecoupled.plan.flops``) at one effective GPU throughput, chosen so that
BP's predicted epoch of WRN-28-10 equals the paper's measured 219.1 s; the same throughput is used for
ResNet-1202. ``python benchmarks/plan_examples.py [DOC]`` rewrites the examples section of docs/planner.md
(about 1 minute on an idle core).
"""
from __future__ import annotations

import os
import sys

import torch

from torchdecoupled.methods import get_method
from torchdecoupled.plan.api import zoo_inputs
from torchdecoupled.plan.flops import flop_costs
from torchdecoupled.plan.links import get_link
from torchdecoupled.plan.search import Setup, best_cut, evaluate

BATCH, EPOCH = 128, 50_000
PAPER = {"bp": 219.1, 2: 118.3, 3: 89.6, 4: 74.1}  # FDG paper (Zhuang et al., TNNLS 2021), Table 6, WRN-28-10
MEMORY_BW = 480e9  # for the SGD updates: a GTX 1080 Ti class card's memory bandwidth
LINKS = ("nvlink", "pcie", "10gbe")
KS = (2, 3, 4, 8)
GB = 2 ** 30


def costs(name: str, flops_per_s: float):
    model, x, y = zoo_inputs(name, "cifar10", 2)
    return flop_costs(model, x, y, BATCH, flops_per_s, MEMORY_BW, name)


def calibrate() -> float:
    """The effective FLOP/s at which BP's WRN-28-10 epoch takes the paper's 219.1 s."""
    c = costs("wrn28_10", 1.0)  # seconds = FLOPs
    flops = sum(layer.forward_s + layer.backward_s for layer in c.layers)
    return flops * (EPOCH / BATCH) / PAPER["bp"]


def rows(name: str, flops_per_s: float) -> list[dict]:
    c = costs(name, flops_per_s)
    bp = evaluate(Setup(c, get_method("bp"), 1, get_link("nvlink")), [])["period_s"]
    out = [{"model": name, "link": "-", "K": 1, "cut": [], "epoch_s": bp * EPOCH / BATCH, "speedup": 1.0,
            "mem_gb": _mem(evaluate(Setup(c, get_method("bp"), 1, get_link("nvlink")), [])), "msg_mb": []}]
    for link in LINKS:
        for K in KS:
            if K > len(c.layers):
                continue
            best, _ = best_cut(Setup(c, get_method("fdg"), K, get_link(link)))
            out.append({"model": name, "link": link, "K": K, "cut": best["boundaries"],
                        "epoch_s": best["period_s"] * EPOCH / BATCH, "speedup": bp / best["period_s"],
                        "mem_gb": _mem(best), "msg_mb": [round(b / 2 ** 20) for b in best["message_bytes"]]})
    return out


def _mem(result) -> list[float]:
    return [m["total"] / GB for m in result["memory"]]


def examples_markdown() -> str:
    torch.set_num_threads(1)
    fps = calibrate()
    lines = [
        "## Worked examples (predictions, not measurements)",
        "",
        f"Command: `python benchmarks/plan_examples.py`. CIFAR-10, batch {BATCH}, {EPOCH} images per epoch, FDG, SGD with "
        f"momentum. Costs derived from FLOPs (matmuls and convolutions, `torch.utils.flop_counter`) at "
        f"**{fps / 1e12:.2f} TFLOP/s effective**, the throughput at which BP's WRN-28-10 epoch takes the FDG paper's "
        f"219.1 s (so BP's row matches by construction, up to the updates' time; only the ratios are predictions); updates at "
        f"{MEMORY_BW / 1e9:g} GB/s of memory bandwidth; stored bytes measured on this machine on 2 samples and "
        "scaled. One GPU per stage; links from `torchdecoupled/plan/links.py` (NVLink 150 GB/s, PCIe 4 x16 "
        "25 GB/s, 10 GbE 1.1 GB/s). Memory: the largest stage, weights + gradients + momentum + stored "
        "activations and weight versions.",
        "",
    ]
    for name in ("wrn28_10", "resnet1202"):
        lines += [f"### {name}", "", "| link | K | cut | s/epoch | speed-up | paper s/epoch | paper speed-up | "
                  "largest stage GB | messages MB |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in rows(name, fps):
            paper = PAPER.get("bp" if r["K"] == 1 else r["K"]) if name == "wrn28_10" else None
            cut = str(r["cut"]) if len(r["cut"]) <= 7 else f"{len(r['cut'])} cuts"
            lines.append(f"| {r['link']} | {r['K']} | {cut} | {r['epoch_s']:.1f} | {r['speedup']:.2f}x | "
                         f"{paper if paper else ''} | {PAPER['bp'] / paper if paper else 0:.2f}x |"
                         .replace("| 0.00x |", "| |") +
                         f" {max(r['mem_gb']):.2f} | {'/'.join(map(str, r['msg_mb']))} |")
        lines.append("")
    return "\n".join(lines)


def write_section(path: str, name: str, text: str) -> None:
    """Replace the text between ``<!-- NAME: start -->`` and ``<!-- NAME: end -->`` in ``path``; the rest of the
    page (hand-written) is kept."""
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    page = open(path).read() if os.path.exists(path) else f"{start}\n{end}\n"
    if start not in page or end not in page:
        raise SystemExit(f"{path} lacks the markers {start} ... {end}")
    head, rest = page.split(start, 1)
    with open(path, "w") as f:
        f.write(head + start + "\n" + text.rstrip() + "\n" + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    text = examples_markdown()
    doc = sys.argv[1] if len(sys.argv) > 1 else "docs/planner.md"
    write_section(doc, "examples", text)
    print(text)

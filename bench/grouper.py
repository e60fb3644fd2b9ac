"""Grouper microbenchmarks: Slot Attention and SMM forward+backward against the peer module, implicit-diff
activation memory, and how cost grows with slots K, tokens N and iterations T."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.common import alternate, fmt_ratio, md_table, paired_ratios, saved_bytes, spread
from bench.reference import load_from, peer_slot_attention
from slotrun.types import Features
from slotrun_slot_attention.grouper import SlotAttention
from slotrun_smm.smm import SlotMixtureModule

# The papers' sizes: Slot Attention on CLEVR (128 px -> 32x32 = 1024 tokens of 64), DINOSAUR (196 ViT tokens,
# reduced to 256 by its input MLP, 7 slots of 256, MLP hidden 1024).
PAPER = {
    "clevr": {"B": 64, "N": 1024, "D": 64, "K": 7, "T": 3, "H": 128},
    "dinosaur": {"B": 64, "N": 196, "D": 256, "K": 7, "T": 3, "H": 1024},
}
TINY = {
    "clevr": {"B": 2, "N": 16, "D": 8, "K": 3, "T": 2, "H": 16},
    "dinosaur": {"B": 2, "N": 9, "D": 16, "K": 3, "T": 2, "H": 32},
}


def make_ours(s: dict[str, int], *, implicit: bool = False, iters: int | None = None) -> SlotAttention:
    return SlotAttention(s["D"], slot_dim=s["D"], num_slots=s["K"], iters=iters or s["T"], mlp_hidden=s["H"],
                         layer_norm_eps=1e-5, implicit_diff=implicit)


def make_smm(s: dict[str, int], *, implicit: bool = False, iters: int | None = None) -> SlotMixtureModule:
    return SlotMixtureModule(s["D"], slot_dim=s["D"], num_slots=s["K"], iters=iters or s["T"], mlp_hidden=s["H"],
                             implicit_diff=implicit)


def tokens_for(s: dict[str, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s["B"], s["N"], s["D"], generator=g).requires_grad_(True)


def fwd_bwd(module: nn.Module, x: torch.Tensor, slotrun_api: bool) -> Callable[[], None]:
    """One forward + backward of `module` on tokens `x` (a leaf that needs grad, as encoder output does)."""
    params = [p for p in module.parameters()]
    feats = Features(tokens=x, grid=(1, x.shape[1]))

    def run() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        out = module(feats).slots if slotrun_api else module(x)
        out.sum().backward()

    return run


def compare(s: dict[str, int], repeats: int, compiled: bool = False) -> dict[str, Any]:
    """Ours (SA, SMM; with `compiled` also SA through torch.compile, as train.compile runs it) vs the peer SA at
    sizes `s`, alternating; ratios are peer time / candidate time."""
    torch.manual_seed(0)
    ours = make_ours(s)
    peer, peer_name = peer_slot_attention(s["K"], s["D"], s["T"], s["H"])
    load_from(peer, ours)
    smm = make_smm(s)
    x = tokens_for(s)
    fns = {"peer": fwd_bwd(peer, x, False), "slotrun_sa": fwd_bwd(ours, x, True),
           "slotrun_smm": fwd_bwd(smm, x, True)}
    if compiled:
        fns["slotrun_sa_compiled"] = fwd_bwd(torch.compile(copy.deepcopy(ours)), x, True)
        fns["slotrun_sa_compiled"]()  # compile outside the timed rounds (paid once per run)
    times = alternate(fns, repeats=repeats)
    out = {
        "sizes": s, "peer": peer_name,
        "seconds": {k: spread(v) for k, v in times.items()},
        "speedup_sa_vs_peer": spread(paired_ratios(times["peer"], times["slotrun_sa"])),
        "speedup_smm_vs_peer": spread(paired_ratios(times["peer"], times["slotrun_smm"])),
        "raw_seconds": times,
    }
    if compiled:
        out["speedup_sa_compiled_vs_peer"] = spread(paired_ratios(times["peer"], times["slotrun_sa_compiled"]))
    return out


def implicit_memory(s: dict[str, int], iters: int) -> dict[str, Any]:
    """Activation bytes (saved tensors, excluding parameters and the input tokens) of one forward with full
    backprop vs first-order implicit differentiation, both running `iters` slot updates."""
    out: dict[str, Any] = {"T": iters}
    for name, make in (("slot_attention", make_ours), ("smm", make_smm)):
        row = {}
        for mode, implicit in (("full", False), ("implicit", True)):
            torch.manual_seed(0)
            module = make(s, implicit=implicit, iters=iters)
            x = tokens_for(s)
            feats = Features(tokens=x, grid=(1, x.shape[1]))
            row[mode] = saved_bytes(lambda: module(feats).slots, exclude=[x, *module.parameters()])
        row["implicit_over_full"] = row["implicit"] / row["full"]
        out[name] = row
    return out


def scaling(base: dict[str, int], repeats: int, tiny: bool) -> list[dict[str, Any]]:
    """slotrun SA fwd+bwd time relative to the base size, varying one of K, N, T (base run alternated)."""
    if tiny:
        variants = [("K", 2 * base["K"]), ("N", 2 * base["N"]), ("T", 2 * base["T"])]
    else:
        variants = [("K", 3), ("K", 11), ("K", 16), ("N", 256), ("N", 4096), ("T", 1), ("T", 5), ("T", 7)]
    rows = []
    torch.manual_seed(0)
    base_mod = make_ours(base)
    bx = tokens_for(base)
    for key, value in variants:
        s = dict(base, **{key: value})
        torch.manual_seed(0)
        mod = make_ours(s)
        x = tokens_for(s)
        t = alternate({"base": fwd_bwd(base_mod, bx, True), "variant": fwd_bwd(mod, x, True)}, repeats=repeats)
        rows.append({"vary": key, "value": value, "size_ratio": value / base[key],
                     "time_ratio": spread(paired_ratios(t["variant"], t["base"]))})
    return rows


def run(*, tiny: bool = False, batch: int | None = None, repeats: int = 7) -> dict[str, Any]:
    sizes = {k: dict(v) for k, v in (TINY if tiny else PAPER).items()}
    if batch is not None:
        for s in sizes.values():
            s["B"] = batch
    reps = 2 if tiny else repeats
    result: dict[str, Any] = {"comparisons": {}, "implicit_memory": [], "scaling": []}
    for name, s in sizes.items():
        result["comparisons"][name] = compare(s, reps, compiled=not tiny)
    mem_sizes = sizes["clevr"]
    result["implicit_memory"] = [implicit_memory(mem_sizes, t) for t in ((2, 3) if tiny else (3, 7))]
    result["scaling"] = scaling(sizes["clevr"], max(2, reps // 2 + 1), tiny)
    result["scaling_base"] = sizes["clevr"]
    return result


def markdown(r: dict[str, Any]) -> str:
    lines = ["### Grouper forward+backward vs the peer module", ""]
    peer = next(iter(r["comparisons"].values()))["peer"]
    lines.append(f"Peer: {peer}, same sizes, same weights (its q/k/v biases zeroed), alternating runs. "
                 "Speedup = peer time / slotrun time, median [p25-p75] of paired runs.")
    lines.append("")
    rows = []
    for name, c in r["comparisons"].items():
        s = c["sizes"]
        size = f"B={s['B']} N={s['N']} D={s['D']} K={s['K']} T={s['T']}"
        rows.append([name, size, f"{c['seconds']['peer']['median'] * 1e3:.1f}",
                     f"{c['seconds']['slotrun_sa']['median'] * 1e3:.1f}", fmt_ratio(c["speedup_sa_vs_peer"]),
                     f"{c['seconds']['slotrun_smm']['median'] * 1e3:.1f}", fmt_ratio(c["speedup_smm_vs_peer"])])
    lines.append(md_table(["sizes", "", "peer ms", "slotrun SA ms", "SA speedup", "slotrun SMM ms",
                           "SMM speedup (vs peer SA)"], rows))
    compiled = [(name, c) for name, c in r["comparisons"].items() if "speedup_sa_compiled_vs_peer" in c]
    if compiled:
        lines += ["", "Slot Attention through torch.compile (`train.compile = true`; compiled once before timing) "
                  "against the same eager peer:", ""]
        lines.append(md_table(["sizes", "peer ms", "slotrun SA compiled ms", "speedup"], [
            [name, f"{c['seconds']['peer']['median'] * 1e3:.1f}",
             f"{c['seconds']['slotrun_sa_compiled']['median'] * 1e3:.1f}", fmt_ratio(c["speedup_sa_compiled_vs_peer"])]
            for name, c in compiled]))
    lines += ["", "### Implicit differentiation: grouper activation memory (saved tensors, excl. params/inputs)", ""]
    rows = []
    for m in r["implicit_memory"]:
        for g in ("slot_attention", "smm"):
            row = m[g]
            rows.append([g, m["T"], f"{row['full'] / 2**20:.2f}", f"{row['implicit'] / 2**20:.2f}",
                         f"{row['implicit_over_full']:.2f}"])
    lines.append(md_table(["grouper", "T", "full backprop MiB", "implicit MiB", "implicit / full"], rows))
    b = r["scaling_base"]
    lines += ["", f"### Cost growth (slotrun SA fwd+bwd, relative to B={b['B']} N={b['N']} D={b['D']} "
              f"K={b['K']} T={b['T']})", ""]
    lines.append(md_table(["vary", "value", "size x", "time x (median [p25-p75])"],
                          [[x["vary"], x["value"], f"{x['size_ratio']:.2f}", fmt_ratio(x["time_ratio"])]
                           for x in r["scaling"]]))
    return "\n".join(lines)

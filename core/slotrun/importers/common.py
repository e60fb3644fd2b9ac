"""What every import format shares: reading a released checkpoint without running its code, checking that every
parameter lands, and writing a run directory that `slotrun eval` / `sample` load like a trained run's."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slotrun.errors import UserError

# Top-level keys under which training frameworks nest the model's state dict.
_NESTED = ("state_dict", "model", "model_state_dict")


@dataclass(frozen=True)
class Reported:
    """What the authors report for one released checkpoint, under slotrun's metric names (fractions, not %),
    and where they report it: `slotrun eval` prints them beside its own figures."""

    model: str  # e.g. "the released COCO model"
    metrics: Mapping[str, float]
    source: str  # e.g. "gkakogeorgiou/spot README.md"
    protocol: str = ""  # what makes the figures comparable, e.g. how COCO was converted, how many seeds

    def to_data(self) -> dict[str, Any]:
        return {"model": self.model, "metrics": dict(self.metrics), "source": self.source,
                "protocol": self.protocol}


def released(fmt: str, choice: str, table: Mapping[str, Reported]) -> Reported | None:
    """The reported figures of the released checkpoint named by a format's `released` setting; "none" (another
    checkpoint in the same layout) has none, and a name the table lacks is refused."""
    if choice == "none":
        return None
    if choice not in table:
        raise UserError(f"{fmt}: released={choice!r} is not one of {', '.join(table)}, none")
    return table[choice]


@dataclass(frozen=True)
class Mapped:
    """A format's reading of one checkpoint: the recipe data it implies and the weights under slotrun's names."""

    recipe: dict[str, Any]
    weights: dict[str, Tensor]
    implied: dict[str, Any] = field(default_factory=dict)  # the architecture settings read from the checkpoint
    reported: Reported | None = None  # the authors' figures for this checkpoint, when it is a released one


@dataclass(frozen=True)
class Format:
    name: str
    summary: str
    settings: Mapping[str, Any]  # KEY=VALUE the command accepts -> its default
    convert: Callable[[dict[str, Tensor], dict[str, Any]], Mapped]


def read_state(path: Path) -> dict[str, Tensor]:
    """A checkpoint's tensors: safetensors, or a torch file loaded with weights_only=True (never unpickled code)."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(f"cannot read {path} as safetensors: {_first(exc)}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refuses pickled code with an UnpicklingError
        raise UserError(f"refusing {path}: it does not load with torch.load(weights_only=True), i.e. it needs "
                        f"pickled code or is not a PyTorch file ({_first(exc)[:160]})") from None
    for key in _NESTED:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise UserError(f"{path} holds no state dict of tensors")
    bad = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise UserError(f"{path}: entry '{bad[0]}' is not a tensor (expected a state dict of tensors)")
    return {str(k): v for k, v in state.items()}


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_settings(fmt: Format, items: list[str]) -> dict[str, Any]:
    """KEY=VALUE settings of a format, typed like their defaults; an unknown key names the known ones."""
    from slotrun.recipe import parse_override

    out = dict(fmt.settings)
    for item in items:
        keys, value = parse_override(item)
        key = ".".join(keys)
        if key not in fmt.settings:
            known = ", ".join(sorted(fmt.settings)) or "none"
            raise UserError(f"import {fmt.name}: unknown setting '{key}' (known: {known})")
        default = fmt.settings[key]
        # bool is an int subclass: num_slots=true must not pass as 1
        if default is not None and (not isinstance(value, type(default))
                                    or isinstance(value, bool) != isinstance(default, bool)):
            raise UserError(f"import {fmt.name}: setting '{key}' must be {type(default).__name__}, got {value!r}")
        out[key] = value
    return out


class Taker:
    """Pops released parameters by name so that whatever is left over at the end is reported, one key a line."""

    def __init__(self, fmt: str, state: Mapping[str, Tensor]) -> None:
        self.fmt = fmt
        self.left = dict(state)

    def has(self, key: str) -> bool:
        return key in self.left

    def take(self, key: str) -> Tensor:
        if key not in self.left:
            raise UserError(f"{self.fmt} checkpoint: missing parameter '{key}'")
        return self.left.pop(key)

    def prefix(self, prefix: str) -> dict[str, Tensor]:
        found = {k[len(prefix):]: self.left.pop(k) for k in [k for k in self.left if k.startswith(prefix)]}
        if not found:
            raise UserError(f"{self.fmt} checkpoint: no parameters under '{prefix}'")
        return found

    def finish(self) -> None:
        if self.left:
            first = sorted(self.left)[0]
            more = f" (and {len(self.left) - 1} more)" if len(self.left) > 1 else ""
            raise UserError(f"{self.fmt} checkpoint: parameter '{first}'{more} does not map onto slotrun's "
                            "components")


def write_run(fmt: Format, mapped: Mapped, run_dir: Path, plugins: Any, source: Path) -> Path:
    """Build the implied recipe's model, load every mapped weight into it (no missing, unused or misshapen key)
    and write RUN_DIR as a run whose newest checkpoint holds the imported weights."""
    from slotrun.api import build_from_recipe
    from slotrun.engine import checkpoint
    from slotrun.engine.run_dir import RunDir
    from slotrun.recipe import structure

    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"RUN_DIR {run_dir} exists and is not empty; import into a new directory")
    recipe = structure({**mapped.recipe, "run": {"dir": str(run_dir)}}, plugins, source=f"import {fmt.name}")
    model = build_from_recipe(recipe, plugins)
    own = model.state_dict()
    missing = sorted(set(own) - set(mapped.weights))
    if missing:
        raise UserError(f"import {fmt.name}: slotrun parameter '{missing[0]}' has no value in the checkpoint")
    unused = sorted(set(mapped.weights) - set(own))
    if unused:
        raise UserError(f"import {fmt.name}: mapped parameter '{unused[0]}' has no place in the slotrun model")
    for key, value in mapped.weights.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(f"import {fmt.name}: parameter '{key}' has shape {tuple(value.shape)} in the "
                            f"checkpoint, slotrun's model needs {tuple(own[key].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.weights.items()}, strict=True)
    run = RunDir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create RUN_DIR {run_dir}: {exc.strerror or exc}") from None
    run.bind(recipe, plugins.versions())
    # Step 0 and no optimiser state: the run is for evaluation and sampling, not for resuming training.
    checkpoint.save(run.checkpoints, 0, model, {"imported": {"format": fmt.name, "checkpoint": str(source)}})
    (run_dir / "imported.json").write_text(
        json.dumps({"format": fmt.name, "checkpoint": str(source), "implied": mapped.implied,
                    "reported": mapped.reported.to_data() if mapped.reported else None}, indent=2,
                   sort_keys=True) + "\n", encoding="utf-8")
    return run_dir


def reported_beside(run_dir: Path, measured: Mapping[str, Any]) -> str | None:
    """One line setting an imported run's measured metrics beside the authors' reported ones (None when the run
    was not imported, or its checkpoint has no reported figures)."""
    try:
        reported = json.loads((Path(run_dir) / "imported.json").read_text(encoding="utf-8")).get("reported")
    except (OSError, ValueError):
        return None
    if not reported:
        return None
    pairs = [f"{name} {measured[name]:.4f} (reported {value:.4f})" for name, value in reported["metrics"].items()
             if isinstance(measured.get(name), (int, float))]
    missing = [name for name in reported["metrics"] if not isinstance(measured.get(name), (int, float))]
    if not pairs:
        return None
    return (f"beside the authors' figures for {reported['model']} ({reported['source']}): " + ", ".join(pairs)
            + (f"; not measured here: {', '.join(missing)}" if missing else "")
            + (f"; note: {reported['protocol']}" if reported.get("protocol") else ""))


def vit_geometry(fmt: str, where: str, enc: Mapping[str, Tensor], *, patches: Sequence[int], family: str,
                 prefix_tokens: int = 1) -> tuple[int, int, int, int]:
    """(width, depth, patch, grid side) of a ViT's weights in timm's layout, `enc`, found under `where`. Its
    patch must be one of `patches` (else refused, naming `family`: the ViTs the format knows); its position
    table holds `prefix_tokens` positions (the class token's; 0 for timm's register ViTs) and a square grid."""
    if "cls_token" not in enc or "patch_embed.proj.weight" not in enc or "pos_embed" not in enc:
        raise UserError(f"{fmt} checkpoint: '{where}*' is not a timm ViT (no cls_token, pos_embed or "
                        "patch_embed.proj.weight)")
    width = int(enc["cls_token"].shape[-1])
    depth = len({k.split(".")[1] for k in enc if k.startswith("blocks.")})
    hw = tuple(enc["patch_embed.proj.weight"].shape[-2:])
    if hw[0] != hw[1] or hw[0] not in patches:
        raise UserError(f"{fmt} checkpoint: {where}patch_embed.proj.weight has patch {hw}; {family} use "
                        + " or ".join(str(p) for p in patches))
    positions = int(enc["pos_embed"].shape[1]) - prefix_tokens
    grid = math.isqrt(positions)
    if grid * grid != positions:
        shape = "a class token plus a square grid" if prefix_tokens else "a square grid"
        raise UserError(f"{fmt} checkpoint: {where}pos_embed {tuple(enc['pos_embed'].shape)} is not {shape} of "
                        "patch positions")
    return width, depth, int(hw[0]), grid


def timm_encoder(fmt: str, *, name: str, width: int, depth: int, heads: int, default_heads: int,
                 heads_setting: str = "heads", block: int = -1, **model_kwargs: Any) -> dict[str, Any]:
    """The recipe table of slotrun's frozen `timm` encoder for a released ViT: timm architecture `name`, resized
    by `model_kwargs` (img_size, ...) and, when width, depth or heads are not the standard ViT-S/B ones, by those.
    `heads` 0 takes `default_heads` (the architecture's); a width whose heads are unknown needs the setting."""
    heads = heads or default_heads
    if not heads:
        raise UserError(f"{fmt}: encoder width {width} is not ViT-S/B; pass {heads_setting}=N (the ViT's "
                        "attention heads)")
    if width % heads:
        raise UserError(f"{fmt}: {heads_setting}={heads} does not divide the encoder width {width}")
    if (depth, heads) != {384: (12, 6), 768: (12, 12)}.get(width):
        model_kwargs.update(embed_dim=width, depth=depth, num_heads=heads)
    return {"type": "timm", "name": name, "pretrained": False, "frozen": True, "block": block,
            "model_kwargs": model_kwargs}


def unused_final_norm(enc: dict[str, Tensor], width: int) -> None:
    """Add the final norm timm builds and slotrun's encoder never applies (it reads a block's tokens before it),
    for releases that store none."""
    enc["norm.weight"] = torch.ones(width)
    enc["norm.bias"] = torch.zeros(width)


def stacked_layers(fmt: str, take: Taker, src: str, dst: str, weights: dict[str, Tensor], what: str,
                   first: int = 0) -> list[int]:
    """An nn.Sequential whose parametrised layers sit at `first`, first + 2, ... (an activation between), stored
    as `src`i.{weight,bias} -> `dst`.(i - first).{weight,bias}; returns the stored indices. Other indices are
    refused, naming `what` (e.g. "an MLP of Linear layers")."""
    layers = sorted({int(k[len(src):].split(".")[0]) for k in take.left if k.startswith(src)})
    if not layers or layers != list(range(first, first + 2 * len(layers), 2)):
        raise UserError(f"{fmt} checkpoint: {src}* layers {layers} are not {what} {first}, {first + 2}, ... "
                        "(an activation between)")
    for i in layers:
        for p in ("weight", "bias"):
            weights[f"{dst}.{i - first}.{p}"] = take.take(f"{src}{i}.{p}")
    return layers


def layernorm_mlp(fmt: str, take: Taker, src: str, dst: tuple[str, str], weights: dict[str, Tensor],
                  what: str) -> list[int]:
    """A LayerNorm followed by Linear layers with ReLUs between, stored as `src`0 (the norm), `src`1, 3, ...
    (OCLF's build_mlp with initial_layer_norm, videosaur's two_layer_mlp with layer_norm) -> slotrun's
    `dst`[0] norm and `dst`[1] Linear 0, 2, ...; returns the Linear widths. `what` names the block in errors."""
    first = take.take(f"{src}0.weight")
    if first.ndim != 1:
        raise UserError(f"{fmt} checkpoint: parameter '{src}0.weight' {tuple(first.shape)} is a Linear, not the "
                        f"LayerNorm {what} starts with")
    weights[f"{dst[0]}.weight"], weights[f"{dst[0]}.bias"] = first, take.take(f"{src}0.bias")
    layers = stacked_layers(fmt, take, src, dst[1], weights, f"LayerNorm 0 then, in {what}, Linear layers", first=1)
    return [int(weights[f"{dst[1]}.{i - 1}.weight"].shape[0]) for i in layers]


# The releases' names for the modules of one Slot Attention update, keyed by slotrun's slot_attention's own: the
# query, key and value projections, the norms of the inputs, slots and MLP input, and the residual MLP's Linears.
OCLF_SLOT_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "norm_inputs": "norm_input", "norm_slots": "norm_slots",
                       "norm_mlp": "ff_mlp.module.0", "mlp.0": "ff_mlp.module.1", "mlp.2": "ff_mlp.module.3"}


def slot_attention_update(fmt: str, take: Taker, prefix: str, names: Mapping[str, str], slot_dim: int,
                          weights: dict[str, Tensor], *, wider_kvq: bool = False) -> int:
    """Slot Attention's update stored under `prefix` with the release's module `names` (as OCLF_SLOT_ATTENTION)
    -> slotrun's `grouper.*`: q, k and v without biases (k and v stacked into project_kv), the GRU, the three
    LayerNorms and the one-hidden-layer residual MLP. q, k and v are of the slot width, or (`wider_kvq`) of the
    width the stored query projection has (OCLF's kvq_dim, slot_attention's kvq_dim). Returns that width; what
    does not fit is refused by name."""
    for part in ("q", "k", "v"):
        if take.has(f"{prefix}{names[part]}.bias"):
            raise UserError(f"{fmt} checkpoint: parameter '{prefix}{names[part]}.bias' does not map (slotrun's "
                            "slot_attention has no q/k/v biases)")
    q, k, v = (take.take(f"{prefix}{names[part]}.weight") for part in ("q", "k", "v"))
    kvq = int(q.shape[0]) if wider_kvq else slot_dim
    for part, w in (("q", q), ("k", k), ("v", v)):
        if w.shape[0] != kvq or (part == "q" and w.shape[1] != slot_dim) or (part == "v" and v.shape != k.shape):
            need = (f"queries, keys and values of one width (kvq_dim {kvq})" if wider_kvq else
                    f"queries, keys and values of the slot width {slot_dim}: kvq_dim unset")
            raise UserError(f"{fmt} checkpoint: parameter '{prefix}{names[part]}.weight' {tuple(w.shape)} does not "
                            f"map (slotrun's slot_attention needs {need}, one head)")
    weights["grouper.project_q.weight"] = q
    weights["grouper.project_kv.weight"] = torch.cat([k, v], dim=0)
    for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        weights[f"grouper.gru.{p}"] = take.take(f"{prefix}gru.{p}")
    for part in ("norm_inputs", "norm_slots", "norm_mlp", "mlp.0", "mlp.2"):
        for p in ("weight", "bias"):
            weights[f"grouper.{part}.{p}"] = take.take(f"{prefix}{names[part]}.{p}")
    return kvq

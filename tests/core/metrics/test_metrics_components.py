"""The registered metric components: registration, configs, and Metric objects vs the pure functions."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slotrun
import slotrun.metrics.plugin
from slotrun.errors import UserError
from slotrun.metrics import adjusted_rand_index, mean_best_overlap, per_image_mse, set_prediction_ap
from slotrun.metrics.components import METRICS, LpipsConfig, SetApConfig
from slotrun.metrics.reconstruction import image_at
from slotrun.protocols import MetricInputs
from slotrun.structure import Structurer
from slotrun.types import Batch, DecoderOutput, Features, ModelOutput, PropertyLayout, Slots

NAMES = ["ari", "fg_ari", "fid", "lpips", "mbo", "mse", "set_ap"]
LAYOUT = PropertyLayout(coords=(0, 2), coord_scale=6.0, categorical=(("shape", 2, 4),), presence=4)


def output(*, masks=None, recon=None, predictions=None) -> ModelOutput:
    zero = torch.zeros(())
    return ModelOutput(
        features=Features(tokens=torch.zeros(1, 1, 1), grid=(1, 1)),
        slots=Slots(slots=torch.zeros(1, 1, 1)),
        decoded=DecoderOutput(losses={}, masks=masks, recon=recon, predictions=predictions),
        losses={}, loss=zero,
    )


def build(name: str, inputs: MetricInputs | None = None, **fields):
    return METRICS[name](**fields).build(inputs or MetricInputs())


def random_masks(gen: torch.Generator, batch: int, slots: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    true = torch.randint(0, 4, (batch, size, size), generator=gen)
    masks = torch.randn(batch, slots, size, size, generator=gen).softmax(dim=1)
    return true, masks


# ---- registration and configs ------------------------------------------------------------------------------


def test_plugin_registers_every_metric() -> None:
    plugins = slotrun.load_plugins(entry_points=False, extra=[("builtin_metrics", slotrun.metrics.plugin)])
    assert not plugins.failures
    assert plugins.registry.names("metrics") == NAMES
    for name in NAMES:
        entry = plugins.registry.get("metrics", name)
        assert entry.summary and entry.plugin == "builtin_metrics"
        cls = entry.config_cls
        config = cls()  # every field has a default
        for f in attrs.fields(cls):
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                setattr(config, f.name, getattr(config, f.name))


def test_configs_validate_and_structure_from_toml() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        SetApConfig(thresholds=())
    with pytest.raises(ValueError, match="positive"):
        SetApConfig(thresholds=(1.0, -1.0))
    with pytest.raises(ValueError, match="high > low"):
        LpipsConfig(value_range=(1.0, 0.0))
    structurer = Structurer(lambda kind, name: METRICS[name], lambda kind: NAMES)
    data = tomllib.loads('type = "set_ap"\nthresholds = [inf, 1, 0.5]')
    spec = structurer.component_one(data, "metrics", "$.eval.metrics[0]")
    assert not structurer.errors and spec.config.thresholds == (math.inf, 1.0, 0.5)
    structurer.component_one({"type": "lpips", "net": "resnet"}, "metrics", "$.eval.metrics[1]")
    assert structurer.errors and structurer.errors[0].endswith("@ $.eval.metrics[1].net")


# ---- masks-based metrics ------------------------------------------------------------------------------------


def test_ari_metrics_match_the_pure_function_over_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    fg, ari, fg_skip = build("fg_ari"), build("ari"), build("fg_ari", skip_empty=True)
    scores_fg, scores_all = [], []
    for _ in range(3):
        true, masks = random_masks(gen, 4, 5, 6)
        true[0] = 0  # an image without foreground: FG-ARI 1.0 and counted (OCLF), or skipped
        for metric in (fg, ari, fg_skip):
            metric.update(Batch(image=torch.zeros(4, 3, 6, 6), mask=true), output(masks=masks))
        scores_fg.append(adjusted_rand_index(true, masks, True))
        scores_all.append(adjusted_rand_index(true, masks, False))
    want_fg, want_all = torch.cat(scores_fg), torch.cat(scores_all)
    assert want_fg[::4].tolist() == [1.0] * 3
    got = fg.compute()
    assert set(got) == {"fg_ari", "fg_ari_frac_above_0.9"}
    assert got["fg_ari"] == pytest.approx(want_fg.mean().item(), abs=1e-12)
    assert got["fg_ari_frac_above_0.9"] == pytest.approx((want_fg >= 0.9).double().mean().item())
    assert fg.num_skipped == 0
    scored = torch.cat([want_fg[i * 4 + 1:(i + 1) * 4] for i in range(3)])
    skipped = fg_skip.compute()
    assert skipped["fg_ari"] == pytest.approx(scored.mean().item(), abs=1e-12)
    assert skipped["fg_ari_frac_above_0.9"] == pytest.approx((scored >= 0.9).double().mean().item())
    assert fg_skip.num_skipped == 3 and skipped["fg_ari"] < got["fg_ari"]
    assert ari.compute() == {"ari": pytest.approx(want_all.mean().item(), abs=1e-12)}
    fg.reset()
    assert math.isnan(fg.compute()["fg_ari"])


@pytest.mark.parametrize("name", ["fg_ari", "ari"])
def test_stored_recipe_without_skip_empty_keeps_skipping(name: str, plugins) -> None:
    from slotrun import recipe as R

    data = R.load_data(Path(__file__).parents[3] / "recipes" / "quickstart.toml")
    data["eval"]["metrics"] = [name]
    assert R.structure(data, plugins, stored=False).eval.metrics[0].config.skip_empty is False
    assert R.structure(data, plugins, stored=True).eval.metrics[0].config.skip_empty is True
    data["eval"]["metrics"] = [{"type": name, "skip_empty": False}]
    assert R.structure(data, plugins, stored=True).eval.metrics[0].config.skip_empty is False


def test_masks_are_resized_to_the_gt_or_the_configured_size() -> None:
    # Slot masks at 4x4 whose argmax, upsampled 2x, is exactly the 8x8 GT: FG-ARI 1 at either size.
    blocks = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3], [0, 0, 3, 3]])
    masks = F.one_hot(blocks, 4).permute(2, 0, 1)[None].float() * 10
    masks = masks.softmax(dim=1)
    gt = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1)[None]
    batch = Batch(image=torch.zeros(1, 3, 8, 8), mask=gt)
    for size in (None, (4, 4), (16, 16)):
        metric = build("fg_ari", MetricInputs(mask_size=size))
        metric.update(batch, output(masks=masks))
        assert metric.compute()["fg_ari"] == pytest.approx(1.0), size
    # Random soft masks: the metric = the pure function on bilinear-upsampled masks.
    gen = torch.Generator().manual_seed(3)
    true, _ = random_masks(gen, 2, 1, 8)
    small = torch.randn(2, 5, 4, 4, generator=gen).softmax(dim=1)
    metric = build("fg_ari")
    metric.update(Batch(image=torch.zeros(2, 3, 8, 8), mask=true), output(masks=small))
    up = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    assert metric.compute()["fg_ari"] == pytest.approx(adjusted_rand_index(true, up, True).nanmean().item())


def test_mbo_metric_with_categories_and_ignore() -> None:
    gen = torch.Generator().manual_seed(1)
    true, masks = random_masks(gen, 3, 4, 6)
    categories = torch.tensor([[0, 0, 1], [2, 1, 1], [0, 1, 2]])
    ignore = torch.rand(3, 6, 6, generator=gen) < 0.2
    batch = Batch(image=torch.zeros(3, 3, 6, 6), mask=true)
    plain = build("mbo")
    plain.update(batch, output(masks=masks))
    mbo, _ = mean_best_overlap(true, masks)
    assert plain.compute() == {"mbo": pytest.approx(mbo.nanmean().item())}
    no_map = build("mbo", ignore_overlaps=True)  # a dataset without an ignore map has nothing to leave out
    no_map.update(batch, output(masks=masks))
    assert no_map.compute() == plain.compute()
    both = build("mbo", ignore_overlaps=True)
    both.update(batch, output(masks=masks), categories=categories, ignore=ignore)
    mbo, mbo_c = mean_best_overlap(true, masks, categories=categories, ignore=ignore)
    assert both.compute() == {"mbo": pytest.approx(mbo.nanmean().item()),
                              "mbo_c": pytest.approx(mbo_c.nanmean().item())}


def test_missing_inputs_are_user_errors() -> None:
    batch = Batch(image=torch.zeros(1, 3, 4, 4), mask=torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(UserError, match="masks=None"):
        build("fg_ari").update(batch, output())
    with pytest.raises(UserError, match="mask=None"):
        build("mbo").update(Batch(image=batch.image), output(masks=torch.ones(1, 1, 4, 4)))
    with pytest.raises(UserError, match="shape"):
        build("mse").update(batch, output(recon=torch.zeros(1, 16, 8)))
    with pytest.raises(UserError, match="properties"):
        build("set_ap")


# ---- set prediction and reconstruction ---------------------------------------------------------------------------


def test_set_ap_metric_matches_the_pure_function() -> None:
    gen = torch.Generator().manual_seed(2)

    def rows(b: int, n: int, presence: torch.Tensor) -> torch.Tensor:
        shape = F.one_hot(torch.randint(0, 2, (b, n), generator=gen), 2).float()
        return torch.cat([torch.rand(b, n, 2, generator=gen), shape, presence[..., None]], dim=-1)

    preds = [rows(3, 4, torch.rand(3, 4, generator=gen)) for _ in range(2)]
    targets = [rows(3, 3, (torch.rand(3, 3, generator=gen) < 0.8).float()) for _ in range(2)]
    metric = build("set_ap", MetricInputs(properties=LAYOUT))
    for p, t in zip(preds, targets, strict=True):
        metric.update(Batch(image=torch.zeros(3, 3, 2, 2), properties=t), output(predictions=p))
    got = metric.compute()
    assert list(got) == ["ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125"]
    p, t = torch.cat(preds), torch.cat(targets)
    for name, thr in zip(got, (None, 1.0, 0.5, 0.25, 0.125), strict=True):
        assert got[name] == pytest.approx(set_prediction_ap(p, t, LAYOUT, thr), abs=1e-12)


def test_mse_and_lpips_metrics() -> None:
    gen = torch.Generator().manual_seed(4)
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    recon = image + 0.1 * torch.randn(2, 3, 32, 32, generator=gen)
    batch = Batch(image=image)
    mse = build("mse")
    mse.update(batch, output(recon=recon))
    assert mse.compute() == {"mse": pytest.approx(per_image_mse(recon, image).mean().item())}
    torch.manual_seed(0)
    lp = build("lpips", pretrained=False)
    assert lp.lpips.distance is None  # building loads nothing (slotrun check); the first update does
    lp.update(batch, output(recon=recon))
    want = lp.lpips.distance(recon, image).mean().item()
    assert lp.compute() == {"lpips": pytest.approx(want, rel=1e-6)} and want > 0


def test_a_reconstruction_at_another_resolution_is_scored_against_the_image_resized_to_it() -> None:
    """A decoder with target_size reconstructs a smaller image: mse compares it with the input resized as PIL
    does (bilinear, antialiased), not with a crop or a nearest-neighbour subsample."""
    from PIL import Image

    gen = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 32, 32, generator=gen)
    pil = torch.stack([torch.from_numpy(np.asarray(Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round()
                                                                   .astype(np.uint8)).resize((12, 12), Image.BILINEAR)))
                       .permute(2, 0, 1).float() / 255 for im in image])
    resized = image_at(image, (12, 12))
    assert resized.shape == (2, 3, 12, 12) and float((resized - pil).abs().max()) < 1.5 / 255
    recon = resized + 0.1 * torch.randn(2, 3, 12, 12, generator=gen)
    mse = build("mse")
    mse.update(Batch(image=image), output(recon=recon))
    assert mse.compute() == {"mse": pytest.approx(per_image_mse(recon, resized).mean().item())}
    assert mse.compute()["mse"] == pytest.approx(0.01, rel=0.2)  # only the added noise: the target is the resize


# ---- merging across processes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fg_ari", "mbo", "set_ap"])
def test_states_of_several_processes_concatenate(name: str) -> None:
    gen = torch.Generator().manual_seed(5)
    inputs = MetricInputs(properties=LAYOUT)
    single, ranks = build(name, inputs), [build(name, inputs), build(name, inputs)]
    for step in range(4):
        true, masks = random_masks(gen, 2, 3, 5)
        preds = torch.rand(2, 3, 5, generator=gen)
        props = torch.rand(2, 2, 5, generator=gen).round()
        batch = Batch(image=torch.zeros(2, 3, 5, 5), mask=true, properties=props)
        out = output(masks=masks, predictions=preds)
        single.update(batch, out)
        ranks[step % 2].update(batch, out)
    merged = build(name, inputs)
    merged.load_state(torch.cat([ranks[0].state(), ranks[1].state()]))
    # Per-image means do not depend on order; set_ap ties are absent with random confidences.
    assert merged.compute() == pytest.approx(single.compute(), nan_ok=True)
    assert merged.state().dtype == torch.float64

"""`slotrun check` runs each model once on 2 synthetic images (forward in train mode, loss, backward) and names
the component that returns the wrong type, returns loss terms other than the ones it declares, or crashes.

The faulty components come from a third-party distribution installed for real (dist-info + entry point)."""

from pathlib import Path

import pytest
import torch
from installed_plugins import install_dist, slotrun_cli

from slotrun.api import build_from_recipe
from slotrun.errors import ComponentFault
from slotrun.recipe import load
from slotrun.run_check import run_recipe_model

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))

PLUGIN = '''
import attrs
import torch
from torch import nn

import slotrun
from slotrun.types import DecoderOutput, Slots


class TensorGrouper(nn.Module):
    """Returns the slot tensor itself instead of Slots."""

    def __init__(self, dim):
        super().__init__()
        self.slot_dim, self.num_slots = dim, 3
        self.proj = nn.Linear(dim, dim)

    def forward(self, features, *, num_slots=None, iters=None):
        return self.proj(features.tokens[:, :self.num_slots])


class Decoder(nn.Module):
    """A mean-squared error of one linear map of the slots; `mode` picks the fault."""

    def __init__(self, slot_dim, mode):
        super().__init__()
        self.mode = mode
        self.loss_terms = ("recon",)
        self.head = nn.Linear(slot_dim, 1)

    def forward(self, slots, features, batch):
        loss = self.head(slots.slots).square().mean()
        if self.mode == "dict":
            return {"recon": loss}
        if self.mode == "terms":
            return DecoderOutput(losses={"recon": loss, "sharpness": loss.detach() * 0})
        if self.mode == "crash":
            return DecoderOutput(losses={"recon": loss + slots.slots[:, 99].sum()})
        return DecoderOutput(losses={"recon": loss})


@attrs.frozen(kw_only=True)
class TensorGrouperConfig:
    """A grouper that returns a Tensor."""

    def build(self, inputs):
        return TensorGrouper(inputs.dim)


@attrs.frozen(kw_only=True)
class DecoderConfig:
    """A decoder with a selectable fault."""

    mode: str = "ok"

    def build(self, inputs):
        return Decoder(inputs.slot_dim, self.mode)


@slotrun.hookimpl
def register_groupers(register):
    register("tensor_grouper", TensorGrouperConfig)


@slotrun.hookimpl
def register_decoders(register):
    register("probe_decoder", DecoderConfig)
'''

RECIPE = """
[run]
dir = "{tmp}/run"

[data]
type = "shapes"
image_size = 16
num_train = 8
num_val = 4
num_test = 4
cache_dir = "{tmp}/data"

[model.encoder]
type = "sa_cnn"
channels = 8

[model.grouper]
{grouper}

[model.decoder]
{decoder}
"""

SLOT_ATTENTION = 'type = "slot_attention"\nnum_slots = 3\niters = 2\nslot_dim = 16\nmlp_hidden = 16'
PROVIDER = "from plugin 'check_probe' (check-probe 1.0)"


def write(tmp_path: Path, name: str, grouper: str, decoder: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(RECIPE.format(tmp=tmp_path, grouper=grouper, decoder=decoder))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    install_dist(folder, "check-probe", "check_probe", PLUGIN)
    return folder


def test_check_names_the_component_at_fault(site, tmp_path):
    ok = write(tmp_path, "ok", SLOT_ATTENTION, 'type = "probe_decoder"')
    tensor = write(tmp_path, "tensor", 'type = "tensor_grouper"', 'type = "probe_decoder"')
    as_dict = write(tmp_path, "dict", SLOT_ATTENTION, 'type = "probe_decoder"\nmode = "dict"')
    terms = write(tmp_path, "terms", SLOT_ATTENTION, 'type = "probe_decoder"\nmode = "terms"')
    crash = write(tmp_path, "crash", SLOT_ATTENTION, 'type = "probe_decoder"\nmode = "crash"')
    out = slotrun_cli(site, "check", *map(str, (ok, tensor, as_dict, terms, crash)))
    assert out.returncode == 1, out.stderr
    assert not any(line.startswith("FAIL ") for line in out.stdout.splitlines())  # failures go to stderr
    lines = out.stdout.strip().splitlines() + [line for line in out.stderr.splitlines() if line.startswith("FAIL ")]
    assert len(lines) == 5, lines
    assert lines[0].startswith(f"ok   {ok} (") and "ran on 2 synthetic images" in lines[0]
    assert lines[1] == (f"FAIL {tensor}: grouper 'tensor_grouper' {PROVIDER} returned Tensor, expected "
                        "slotrun.types.Slots (a bug in the plugin, not in your recipe)")
    assert lines[2] == (f"FAIL {as_dict}: decoder 'probe_decoder' {PROVIDER} returned dict, expected "
                        "slotrun.types.DecoderOutput (a bug in the plugin, not in your recipe)")
    assert lines[3] == (f"FAIL {terms}: decoder 'probe_decoder' {PROVIDER} returned undeclared loss term(s) "
                        "sharpness (its loss_terms declares 'recon'; declare exactly the terms it returns in "
                        "training) (a bug in the plugin, not in your recipe)")
    assert lines[4].startswith(f"FAIL {crash}: decoder 'probe_decoder' {PROVIDER} failed on a batch of 2 images "
                               "(3, 16, 16): IndexError: ")
    assert lines[4].endswith("(a bug in the plugin, not in your recipe; --debug shows the traceback)")
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback_into_the_plugin_and_no_run_skips_the_run(site, tmp_path):
    crash = write(tmp_path, "crash", SLOT_ATTENTION, 'type = "probe_decoder"\nmode = "crash"')
    out = slotrun_cli(site, "--debug", "check", str(crash))
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "check_probe.py" in out.stderr
    assert "slots.slots[:, 99]" in out.stderr  # the plugin's own line
    skipped = slotrun_cli(site, "check", "--no-run", str(crash))
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert skipped.stdout.startswith(f"ok   {crash} (") and "not run (--no-run)" in skipped.stdout


def test_missing_declared_term_and_non_finite_term_are_named(plugins, tmp_path):
    path = write(tmp_path, "ok", SLOT_ATTENTION, 'type = "spatial_broadcast"\nbroadcast_size = 8\nchannels = 8')
    recipe = load(path, plugins=plugins)
    model = build_from_recipe(recipe, plugins)
    model.decoder.loss_terms = ("recon", "sharpness")
    with pytest.raises(ComponentFault, match=r"^decoder 'spatial_broadcast' from plugin 'slot_attention' \(slotrun "
                       r"[^)]*\) returned not the declared term\(s\) sharpness"):
        run_recipe_model(recipe, model)
    model.decoder.loss_terms = ("recon",)
    model.decoder.register_forward_hook(lambda m, a, out: type(out)(losses={"recon": out.losses["recon"] * torch.nan}))
    with pytest.raises(ComponentFault, match=r"^decoder 'spatial_broadcast' .* returned a non-finite loss term "
                                             r"'recon' \(nan\)"):
        run_recipe_model(recipe, model)


def test_the_run_leaves_random_state_mode_and_weights_alone(plugins, tmp_path):
    path = write(tmp_path, "ok", SLOT_ATTENTION, 'type = "spatial_broadcast"\nbroadcast_size = 8\nchannels = 8')
    recipe = load(path, plugins=plugins)
    model = build_from_recipe(recipe, plugins).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run_recipe_model(recipe, model)
    assert torch.equal(torch.rand(3), expected)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_every_shipped_recipe_runs(path, plugins):
    recipe = load(path, plugins=plugins)
    model = build_from_recipe(recipe, plugins)
    run_recipe_model(recipe, model)  # never downloads: a pretrained encoder keeps its random weights


def test_a_perceptual_loss_runs_without_loading_its_backbone(plugins):
    recipe = load(ROOT / "recipes" / "quickstart.toml", ["model.decoder.perceptual=alex"], plugins=plugins)
    model = build_from_recipe(recipe, plugins)
    run_recipe_model(recipe, model)  # a download would fail offline and is never attempted
    assert model.decoder.perceptual.distance is None  # the ImageNet weights still load before step 0

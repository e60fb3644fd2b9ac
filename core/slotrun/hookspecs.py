"""The only place slotrun's plugin hooks are declared. Each docstring is the contract.

A plugin is a module listed in the entry-point group "slotrun" that implements some of these hooks with
`@slotrun.hookimpl`. Every hook receives one argument, `register`, a callback:

    register(name: str, config_cls: type) -> None

`name` is what a recipe writes in `type = "..."` (lowercase letters, digits, underscores; unique within its
kind across all plugins). `config_cls` is a frozen, kw_only attrs class whose every field has a default and
whose validators reject bad values; its `build(inputs)` returns the component. Register each name once.
(`register_commands` is the exception: its `register` adds a command to the `slotrun` command line.)
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "slotrun"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, type], None]
# register(name, run, *, help, arguments=None): see register_commands
RegisterCommand = Callable[..., None]


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders: `config.build(ImageSpec)` returns an nn.Module mapping images [B, C, H, W] to
    `slotrun.types.Features`, with attribute `out_dim` (token channels) and method `grid_for(h, w)`; Features
    carry each token's position (`positions` [B, N, 2], (y, x) in [-1, 1]). An encoder
    that trains its own objective (SLATE's dVAE) returns it in Features.losses and names every term in its
    attribute `loss_terms`; one whose Features carry a reconstruction target states its width in `target_dim`."""


@hookspec
def register_groupers(register: Register) -> None:
    """Register groupers: `config.build(GrouperInputs)` returns an nn.Module mapping Features to
    `slotrun.types.Slots`, with attributes `slot_dim` and `num_slots` and keyword-only call arguments
    `num_slots` and `iters` that override the configured values for one call (one that cannot change its slot
    count raises ValueError naming num_slots). It must be invariant to the order of input tokens (with their
    positions) and equivariant to the order of slots. An iterative grouper (attribute `iters`) fills
    Slots.history; one with `initial_slots(features, num_slots=)` also accepts `slots_init=` (see
    `slotrun.protocols.SeededGrouper`), through which the conformance kit checks slot-order equivariance."""


@hookspec
def register_decoders(register: Register) -> None:
    """Register decoders: `config.build(DecoderInputs)` returns an nn.Module called as
    `decoder(slots, features, batch)` -> `slotrun.types.DecoderOutput`. It computes its own loss terms (the
    reconstruction or prediction loss) and lists every term name in its attribute `loss_terms`. A decoder that
    can render slots without an image (generative models) also has `decode_slots(slots [B, K, D])` ->
    DecoderOutput (no loss terms needed); with a prior that samples, the engine draws a grid of samples."""


@hookspec
def register_priors(register: Register) -> None:
    """Register slot priors: `config.build(PriorInputs)` returns an nn.Module called like a decoder, as
    `prior(slots, features, batch)` -> {term: scalar tensor} (names listed in `loss_terms`), and, to generate,
    `sample(n, num_slots, temperature)` returning slot vectors [n, K, D]. A prior may build a
    decoder of its own from `PriorInputs.decoder` and keep it as its attribute `decoder`: samples are then
    decoded with it (`decode_slots`) instead of the model's decoder. Optional: `score_samples(images, masks,
    source)` -> {name: float}, scores of the decoded samples for the run's DataSource ({} for a dataset it has
    no score for; `slotrun sample` reports them; see `slotrun.protocols.ScoringPrior`)."""


@hookspec
def register_regularisers(register: Register) -> None:
    """Register slot regularisers: `config.build(RegulariserInputs)` (slot size, slot count, token grid) returns
    an nn.Module called as `reg(slots, features)` -> one scalar tensor, during training only (Features.positions
    place the tokens the attention maps cover). The loss term is named by the regulariser's key
    in the recipe's [model.regularisers] table; its weight comes from the recipe's train.loss_weights."""


@hookspec
def register_balancers(register: Register) -> None:
    """Register loss balancers: `config.build(BalancerInputs)` returns an nn.Module (see
    `slotrun.protocols.Balancer`) that claims some of the model's loss terms by name (attribute `terms`) and
    replaces their plain weighted sum in the total:

    - `balancer(losses)` -> one scalar tensor, its contribution to the total, computed with its current state
      from the claimed terms present in `losses` (a term produced in training only may be absent in evaluation);
    - `update(values)` adapts the state once per optimiser step, in training only, from the step's claimed
      term values as floats (averaged over gradient-accumulation micro-batches and processes, so every
      process holds the same state); the engine skips it on non-finite steps;
    - `scalars()` -> {name: float} of state worth logging (GECO: "beta"), logged as "BALANCER.NAME".

    State that must survive a resume is kept in registered buffers (saved with the weights). A term may be
    claimed by one balancer only, must be one the model produces, and takes no train.loss_weights entry."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: `config.build(None)` returns a `slotrun.protocols.DataSource`. Building must not
    touch the disk; `prepare()` generates or checks the data and raises `slotrun.errors.UserError` naming the
    path and how to obtain the data when it is missing."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register evaluation metrics: `config.build(MetricInputs)` returns a `slotrun.protocols.Metric` whose
    `compute()` returns {metric name: float} over every batch passed to `update(batch, model_output)`."""


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Register commands of the `slotrun` command line: `register(name, run, help="one line", arguments=None)`
    adds `slotrun NAME`. `arguments(parser)` adds the command's arguments to its argparse parser; `run(args)`
    does the work with the parsed `argparse.Namespace` and returns the exit status (None: 0). A user's mistake
    is raised as `slotrun.errors.UserError` (one line on stderr, exit 2); any other exception is reported as
    the plugin's bug (exit 1, its traceback under --debug). Names are lowercase words (letters, digits, "-",
    "_"); a built-in command's name is reserved (the plugin is disabled), and of two third-party plugins that
    register one name, the later is disabled, naming both."""

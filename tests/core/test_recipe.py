"""Recipes: extends, overrides, strict structuring, every error at once with its key path."""

import tomllib

import attrs
import pytest
from attrs import field
from attrs import validators as v

import slotrun
from slotrun import recipe as R
from slotrun.errors import RecipeError, UserError
from slotrun.plugins import load_plugins
from slotrun.structure import earlier_default


@attrs.frozen(kw_only=True)
class GrouperCfg:
    """A grouper."""

    num_slots: int = field(default=7, validator=v.ge(1))
    iters: int = field(default=3, validator=v.ge(1))
    eps: float = 1e-8
    sizes: tuple[int, ...] = (1, 2)

    def build(self, inputs):
        return None


@attrs.frozen(kw_only=True)
class OtherGrouperCfg:
    """Another grouper with different keys."""

    temperature: float = 1.0

    def build(self, inputs):
        return None


@attrs.frozen(kw_only=True)
class PlainCfg:
    """Anything."""

    channels: int = field(default=64, validator=v.ge(1))
    name: str = "x"

    def build(self, inputs):
        return None


class Fake:
    @staticmethod
    @slotrun.hookimpl
    def register_groupers(register):
        register("slot_attention", GrouperCfg)
        register("other", OtherGrouperCfg)

    @staticmethod
    @slotrun.hookimpl
    def register_encoders(register):
        register("cnn", PlainCfg)

    @staticmethod
    @slotrun.hookimpl
    def register_decoders(register):
        register("broadcast", PlainCfg)

    @staticmethod
    @slotrun.hookimpl
    def register_datasets(register):
        register("shapes", PlainCfg)

    @staticmethod
    @slotrun.hookimpl
    def register_metrics(register):
        register("fg_ari", PlainCfg)
        register("mse", PlainCfg)

    @staticmethod
    @slotrun.hookimpl
    def register_regularisers(register):
        register("cov", PlainCfg)


BASE = """
[run]
dir = "runs/x"
[data]
type = "shapes"
[model.encoder]
type = "cnn"
channels = 32
[model.grouper]
type = "slot_attention"
num_slots = 5
[model.decoder]
type = "broadcast"
[train]
steps = 10
[eval]
metrics = ["fg_ari", {type = "mse", channels = 3}]
"""


@pytest.fixture
def fake():
    return load_plugins(entry_points=False, extra=[("fake", Fake)])


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text(BASE)
    return path


def problems(path, fake, overrides=()):
    with pytest.raises(RecipeError) as exc:
        R.load(path, overrides, plugins=fake)
    return exc.value.problems


def test_structures_into_configs(base, fake):
    recipe = R.load(base, plugins=fake)
    assert recipe.model.grouper.type == "slot_attention"
    assert recipe.model.grouper.config == GrouperCfg(num_slots=5)
    assert recipe.model.encoder.config.channels == 32
    assert [m.type for m in recipe.eval.metrics] == ["fg_ari", "mse"]
    assert recipe.eval.metrics[1].config.channels == 3
    assert recipe.train.steps == 10 and recipe.train.seed == 0
    assert recipe.model.prior is None and recipe.model.regularisers == {}


def test_four_kinds_of_mistakes_reported_together(tmp_path, fake):
    path = tmp_path / "bad.toml"
    path.write_text(BASE.replace("num_slots = 5", "num_slot = 5\niters = 0")
                    .replace("channels = 32", 'channels = "32"').replace('type = "broadcast"', 'type = "brodcast"'))
    found = problems(path, fake)
    assert found == [
        "expected an integer, got string '32' @ $.model.encoder.channels",
        "unknown key 'num_slot'; did you mean 'num_slots'? @ $.model.grouper.num_slot",
        "'iters' must be >= 1: 0 @ $.model.grouper.iters",
        "unknown decoder 'brodcast'; did you mean 'broadcast'? (known: broadcast) @ $.model.decoder.type",
    ]


def test_validator_and_type_errors_in_the_same_table(tmp_path, fake):
    path = tmp_path / "bad.toml"
    path.write_text(BASE.replace("num_slots = 5", "num_slots = 0\niters = 1.5\nsizes = [1, 'a']"))
    assert problems(path, fake) == [
        "expected an integer, got float 1.5 @ $.model.grouper.iters",
        "expected an integer, got string 'a' @ $.model.grouper.sizes[1]",
        "'num_slots' must be >= 1: 0 @ $.model.grouper.num_slots",
    ]


def test_missing_tables_and_type(tmp_path, fake):
    path = tmp_path / "bad.toml"
    path.write_text('[model.encoder]\nchannels = 3\n[model.grouper]\ntype = 7\n')
    assert problems(path, fake) == [
        "required key missing @ $.data",
        'missing type = "..." naming an encoder (known: cnn) @ $.model.encoder.type',
        "expected a string, got integer 7 @ $.model.grouper.type",
        "required key missing @ $.model.decoder",
    ]


def test_extends_merges_and_type_change_replaces(tmp_path, base, fake):
    child = tmp_path / "sub" / "child.toml"
    child.parent.mkdir()
    child.write_text('extends = "../base.toml"\n[model.grouper]\ntype = "other"\ntemperature = 0.5\n'
                     "[model.encoder]\nname = 'y'\n")
    recipe = R.load(child, plugins=fake)
    assert recipe.model.grouper.config == OtherGrouperCfg(temperature=0.5)  # num_slots did not leak across types
    assert recipe.model.encoder.config == PlainCfg(channels=32, name="y")  # same type: merged


def test_extends_cycle_and_missing_parent(tmp_path, fake):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(UserError, match="extends cycle"):
        R.load(tmp_path / "a.toml", plugins=fake)
    (tmp_path / "c.toml").write_text('extends = "nope.toml"\n')
    with pytest.raises(UserError, match=r"recipe not found: .*nope.toml \(extended by .*c.toml\)"):
        R.load(tmp_path / "c.toml", plugins=fake)


def test_broken_toml_names_file_and_line(tmp_path, fake):
    path = tmp_path / "broken.toml"
    path.write_text("[model\n")
    with pytest.raises(UserError, match=r"broken.toml: invalid TOML: .*line 1"):
        R.load(path, plugins=fake)


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("model.grouper.iters=5", ["model", "grouper", "iters"], 5),
        ("train.lr=1e-4", ["train", "lr"], 1e-4),
        ('data.type="shapes"', ["data", "type"], "shapes"),
        ("data.type=shapes", ["data", "type"], "shapes"),  # shells strip quotes
        ("eval.mask_size=[64, 64]", ["eval", "mask_size"], [64, 64]),
        ("train.grad_clip_norm=inf", ["train", "grad_clip_norm"], float("inf")),
        ("run.dir=runs/a-b.c", ["run", "dir"], "runs/a-b.c"),
        ("data.cache_dir=/tmp/x", ["data", "cache_dir"], "/tmp/x"),
        ("data.cache_dir=~/data", ["data", "cache_dir"], "~/data"),
        ("x.flag=true", ["x", "flag"], True),
    ],
)
def test_override_values(text, keys, value):
    assert R.parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=3", "a.b=[1,", "a.b=two words"])
def test_bad_overrides(text):
    with pytest.raises(UserError, match="bad override"):
        R.parse_override(text)


def test_overrides_apply_and_are_validated(base, fake):
    recipe = R.load(base, ["model.grouper.iters=5", "train.steps=3", "model.grouper.type=other"], plugins=fake)
    assert recipe.model.grouper.config == OtherGrouperCfg() and recipe.train.steps == 3
    assert problems(base, fake, ["model.grouper.iters=-1"]) == ["'iters' must be >= 1: -1 @ $.model.grouper.iters"]
    with pytest.raises(UserError, match=r"\$.train.steps is not a table"):
        R.load(base, ["train.steps.x=1"], plugins=fake)


def test_show_round_trips(base, fake, tmp_path):
    recipe = R.load(base, ["model.regularisers.decorrelate.type=cov"], plugins=fake)
    text = R.to_toml(recipe)
    tomllib.loads(text)
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert R.load(again, plugins=fake) == recipe
    assert recipe.model.regularisers["decorrelate"].type == "cov"


def test_recipes_cannot_run_code(tmp_path, fake):
    path = tmp_path / "evil.toml"
    path.write_text(BASE.replace('type = "cnn"', 'type = "os.system"\n_target_ = "os.system"'))
    found = problems(path, fake)
    assert any("unknown encoder 'os.system'" in p for p in found)


def test_arrays_of_tables_are_validated_item_by_item(tmp_path, fake):
    path = tmp_path / "groups.toml"
    path.write_text(BASE + '[[train.param_groups]]\nprefix = "encoder."\nlr = 3e-4\n'
                           '[[train.param_groups]]\nprefix = ""\nlr = -1.0\nwarmup = 3\n')
    assert problems(path, fake) == [
        "unknown key 'warmup'; did you mean 'warmup_steps'? @ $.train.param_groups[1].warmup",
        "Length of 'prefix' must be >= 1: 0 @ $.train.param_groups[1].prefix",
        "'lr' must be > 0.0: -1.0 @ $.train.param_groups[1].lr",
    ]
    path.write_text(BASE + '[[train.param_groups]]\nprefix = "encoder."\nlr = 3e-4\n')
    recipe = R.load(path, plugins=fake)
    assert recipe.train.param_groups[0].prefix == "encoder." and recipe.train.param_groups[0].lr == 3e-4


@attrs.frozen(kw_only=True)
class ChangedDefaultCfg:
    """A grouper whose `padding` default changed from "symmetric" to "tf_same"."""

    num_slots: int = field(default=7, validator=v.ge(1))
    padding: str = field(default="tf_same", validator=v.in_(("tf_same", "symmetric")),
                         metadata=earlier_default("symmetric"))

    def build(self, inputs):
        return None


class ChangedDefault:
    @staticmethod
    @slotrun.hookimpl
    def register_groupers(register):
        register("changed", ChangedDefaultCfg)


@pytest.mark.parametrize("stored, given, expected", [
    (False, None, "tf_same"),  # a new recipe gets the new default
    (True, None, "symmetric"),  # a run directory written before the setting existed keeps its computation
    (True, "tf_same", "tf_same"),  # a stored value always wins
    (False, "symmetric", "symmetric"),
])
def test_stored_recipe_missing_a_changed_setting_takes_its_earlier_default(stored, given, expected):
    plugins = load_plugins(entry_points=False, extra=[("fake", Fake), ("changed", ChangedDefault)])
    data = tomllib.loads(BASE.replace('type = "slot_attention"', 'type = "changed"'))
    if given is not None:
        data["model"]["grouper"]["padding"] = given
    loaded = R.structure(data, plugins, stored=stored)
    assert loaded.model.grouper.config.padding == expected
    assert loaded.model.grouper.config.num_slots == 5  # other keys are read as written


def test_evaluating_a_run_directory_reads_its_recipe_as_stored(tmp_path):
    from slotrun.engine import evaluate

    plugins = load_plugins(entry_points=False, extra=[("fake", Fake), ("changed", ChangedDefault)])
    (tmp_path / "recipe.toml").write_text(BASE.replace('type = "slot_attention"', 'type = "changed"'))
    assert evaluate._run_recipe(tmp_path, (), plugins).model.grouper.config.padding == "symmetric"
    assert R.load(tmp_path / "recipe.toml", plugins=plugins).model.grouper.config.padding == "tf_same"


def test_resuming_a_run_that_predates_a_setting_names_the_setting_and_its_two_values():
    from slotrun.engine.run_dir import diff_data
    from slotrun.structure import with_earlier_defaults

    plugins = load_plugins(entry_points=False, extra=[("fake", Fake), ("changed", ChangedDefault)])
    new = R.structure(tomllib.loads(BASE.replace('type = "slot_attention"', 'type = "changed"')), plugins)
    stored = R.to_data(new)  # fully resolved, as a run directory keeps it, but written before `padding` existed
    del stored["model"]["grouper"]["padding"]
    assert diff_data(stored, R.to_data(new)) == ["$.model.grouper.padding: (absent) -> 'tf_same'"]
    assert diff_data(with_earlier_defaults(stored, new), R.to_data(new)) == [
        "$.model.grouper.padding: 'symmetric' -> 'tf_same'"]
    pinned = R.structure(R.apply_overrides(stored, ['model.grouper.padding="symmetric"']), plugins)
    assert diff_data(with_earlier_defaults(stored, pinned), R.to_data(pinned)) == []  # resumable with the old value


def test_a_sweep_table_is_left_to_slotrun_sweep(fake, base, tmp_path):
    path = tmp_path / "swept.toml"
    path.write_text(f'extends = "{base}"\n[sweep]\nseeds = 3\n[sweep.grid]\n"model.grouper.num_slots" = [3, 4]\n')
    assert R.load(path, plugins=fake) == R.load(base, plugins=fake)  # train / check / show run the recipe itself

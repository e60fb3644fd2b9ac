import attrs
import pytest

import slotrun
from slotrun.errors import PluginError, UserError
from slotrun.plugins import load_plugins
from slotrun.registry import Entry, Registry


@attrs.frozen(kw_only=True)
class Cfg:
    """A config."""

    size: int = 3

    def build(self, inputs):
        return inputs


def entry(name="slot_attention", kind="groupers", plugin="a", cls=Cfg):
    return Entry(kind=kind, name=name, config_cls=cls, plugin=plugin, distribution=f"dist-{plugin}", version="1.2")


def test_duplicate_names_both_providers():
    reg = Registry()
    reg.add(entry(plugin="first"))
    with pytest.raises(PluginError) as exc:
        reg.add(entry(plugin="second"))
    message = str(exc.value)
    assert "plugin 'first' (dist-first 1.2)" in message and "plugin 'second' (dist-second 1.2)" in message


def test_same_name_in_another_kind_is_fine():
    reg = Registry()
    reg.add(entry(kind="groupers"))
    reg.add(entry(kind="decoders"))
    assert reg.names("groupers") == reg.names("decoders") == ["slot_attention"]


def test_unknown_name_did_you_mean_and_known_list():
    reg = Registry()
    reg.add(entry())
    reg.add(entry(name="soft_kmeans"))
    with pytest.raises(UserError, match=r"unknown grouper 'slot_atention'; did you mean 'slot_attention'\? "
                                        r"\(known: slot_attention, soft_kmeans\)"):
        reg.get("groupers", "slot_atention")


def test_list_by_pattern_and_provenance():
    reg = Registry()
    for name in ("slot_attention", "slot_mixture", "gmm"):
        reg.add(entry(name=name))
    assert reg.names("groupers", "slot_*") == ["slot_attention", "slot_mixture"]
    assert reg.get("groupers", "gmm").provider == "plugin 'a' (dist-a 1.2)"


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (dict, "not an attrs class"),
        (attrs.frozen(type("NoBuild", (), {"__annotations__": {"x": int}, "x": 1})), "no build"),
        (attrs.frozen(kw_only=True)(type("NoDefault", (), {"__annotations__": {"x": int}, "build": lambda s, i: i})),
         "no default"),
    ],
)
def test_bad_config_classes(cls, message):
    with pytest.raises(PluginError, match=message):
        Registry().add(entry(cls=cls))


def test_bad_name():
    with pytest.raises(PluginError, match="lowercase"):
        Registry().add(entry(name="Slot-Attention"))


class GoodPlugin:
    @staticmethod
    @slotrun.hookimpl
    def register_groupers(register):
        register("my_grouper", Cfg)

    @staticmethod
    @slotrun.hookimpl
    def register_regularisers(register):
        register("my_reg", Cfg)


class DuplicatePlugin:
    @staticmethod
    @slotrun.hookimpl
    def register_groupers(register):
        register("other", Cfg)  # would be fine alone, but the plugin is rejected whole
        register("my_grouper", Cfg)


class UnknownHookPlugin:
    @staticmethod
    @slotrun.hookimpl
    def register_widgets(register):
        register("w", Cfg)


class RaisingPlugin:
    @staticmethod
    @slotrun.hookimpl
    def register_groupers(register):
        raise RuntimeError("boom")


def test_in_process_plugins_and_failure_policy():
    plugins = load_plugins(
        entry_points=False,
        extra=[("good", GoodPlugin), ("dup", DuplicatePlugin), ("unknown", UnknownHookPlugin), ("raises", RaisingPlugin)],
    )
    assert plugins.registry.names("groupers") == ["my_grouper"]  # nothing of 'dup' leaked in
    assert plugins.registry.names("regularisers") == ["my_reg"]
    failures = {f.plugin: f.message for f in plugins.failures}
    assert set(failures) == {"dup", "unknown", "raises"}
    assert "registered twice" in failures["dup"] and "plugin 'good'" in failures["dup"]
    assert "register_widgets" in failures["unknown"]
    assert failures["raises"] == "RuntimeError: boom"
    with pytest.raises(UserError, match=r"unknown grouper 'other'.*plugin\(s\) 'dup', 'unknown', 'raises' failed"):
        plugins.entry("groupers", "other")
    with pytest.raises(PluginError, match="plugin 'dup'"):
        plugins.strict()


def test_entry_points_load_the_builtins(plugins):
    assert "slot_attention" in plugins.infos
    entry_ = plugins.entry("groupers", "slot_attention")
    assert entry_.plugin == "slot_attention" and entry_.distribution == "slotrun"
    assert entry_.version == slotrun.__version__


def test_summary_is_the_whole_first_paragraph_of_the_docstring(plugins):
    @attrs.frozen(kw_only=True)
    class Wrapped:
        """Slot Attention with a docstring that wraps
        onto a second line.

        Details that `slotrun plugins` leaves out.
        """

        def build(self, inputs):
            return None

    entry = Entry(kind="groupers", name="wrapped", config_cls=Wrapped, plugin="p", distribution="d", version="0")
    assert entry.summary == "Slot Attention with a docstring that wraps onto a second line."
    for shipped in plugins.registry:  # no built-in summary ends mid-sentence
        assert shipped.summary.endswith((".", ")")), (shipped.name, shipped.summary)

"""Commands added by installed third-party plugins (hook register_commands): they run like built-in ones, a
user's mistake in them exits 2, their bug exits 1 naming the plugin, and built-in command names are reserved."""

from pathlib import Path

import pytest
from installed_plugins import install_dist, slotrun_cli

from slotrun.cli import COMMANDS

COMMAND = '''
import slotrun
from slotrun.errors import UserError


def arguments(parser):
    parser.add_argument("word")
    parser.add_argument("--times", type=int, default=1)


def run(args):
    if args.word == "mistake":
        raise UserError("hello: 'mistake' is not a word I greet")
    if args.word == "bug":
        return 1 / 0
    print(" ".join([args.word] * args.times))
    return 0


@slotrun.hookimpl
def register_commands(register):
    register({name!r}, run, help="greet a word", arguments=arguments)
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    install_dist(site, "hello-plugin", "hello", COMMAND.format(name="hello"))
    install_dist(site, "takes-train", "takes_train", COMMAND.format(name="train"))
    install_dist(site, "hello-again", "zz_hello_again", COMMAND.format(name="hello"))
    return site


def test_a_plugin_command_runs_with_its_arguments(site):
    done = slotrun_cli(site, "hello", "slots", "--times", "2")
    assert (done.returncode, done.stdout.strip()) == (0, "slots slots"), done.stderr


def test_a_plugin_command_is_listed_with_its_plugin(site):
    done = slotrun_cli(site, "plugins", "--kind", "command")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [r[:3] for r in rows] == [["command", "hello", "hello"]]
    assert "hello" in slotrun_cli(site, "--help").stdout


def test_a_mistake_in_a_plugin_command_is_the_users_one_line(site):
    done = slotrun_cli(site, "hello", "mistake")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "slotrun: error: hello: 'mistake' is not a word I greet"


def test_a_bug_in_a_plugin_command_names_the_plugin_and_exits_1(site):
    done = slotrun_cli(site, "hello", "bug")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "command 'hello' of plugin 'hello' (hello-plugin 1.0)" in last and "ZeroDivisionError" in last
    assert "Traceback" not in done.stderr
    assert "hello_plugin.py" in slotrun_cli(site, "--debug", "hello", "bug").stderr  # the traceback into its code


def test_built_in_command_names_are_reserved_and_clashes_disable_the_later(site):
    done = slotrun_cli(site, "plugins", "--kind", "command")
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert any("'takes_train' (takes-train)" in w and "built-in slotrun command" in w for w in warnings), warnings
    assert any("'zz_hello_again' (hello-again)" in w and "already registered by plugin 'hello' (hello-plugin 1.0)"
               in w for w in warnings), warnings
    assert len(warnings) == 2
    assert "train" in COMMANDS

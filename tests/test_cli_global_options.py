"""The global options (``--data``, ``-v``) in any position: before the verb, after it, and after a
nested command (``hilum users add NAME --role admin --data DIR``), for every command there is."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hilum.cli import build_parser


def hilum(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HILUM_DATA": "/nonexistent/must-not-be-used"}
    return subprocess.run(
        [sys.executable, "-m", "hilum", *map(str, args)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        env=env,
    )


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command line a person can type, as (words, the parser of the last word): the leaves."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, nested in action.choices.items():
            yield from _commands(nested, (*path, name))


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the command's required arguments, so that it parses."""
    out: list[str] = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            continue
        needed = a.required if a.option_strings else a.nargs not in ("?", "*")
        if not needed:
            continue
        value = str(next(iter(a.choices))) if a.choices else "7" if a.type in (int, float) else "x"
        if a.option_strings:
            out += [a.option_strings[0], value]
        else:
            out.append(value)
    return out


def _leaves() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return [(words, p) for words, p in _commands(build_parser()) if words]


def test_the_walk_finds_the_nested_commands() -> None:
    names = {" ".join(words) for words, _ in _leaves()}
    assert {"import", "serve", "gui", "users add", "users list", "hl7 orders", "hl7 send", "find"} <= names


@pytest.mark.parametrize("words", [w for w, _ in _leaves()], ids=lambda w: " ".join(w))
def test_every_command_takes_data_and_verbose_at_the_end(words: tuple[str, ...], tmp_path: Path) -> None:
    leaf = dict(_leaves())[words]
    line = [*words, *_required(leaf)]
    parser = build_parser()
    args = parser.parse_args([*line, "--data", str(tmp_path), "-v"])
    assert args.data == str(tmp_path)
    assert getattr(args, "verbose_after", 0) + args.verbose == 1
    # before the verb, and the last one given wins
    assert parser.parse_args(["--data", "first", *line]).data == "first"
    assert parser.parse_args(["--data", "first", *line, "--data", "last"]).data == "last"
    assert parser.parse_args(line).data is None


def test_data_between_a_verb_and_its_nested_command() -> None:
    parser = build_parser()
    args = parser.parse_args(["users", "--data", "D", "add", "bob", "--role", "viewer"])
    assert (args.data, args.users_command, args.name) == ("D", "add", "bob")
    args = parser.parse_args(["users", "--data", "early", "add", "bob", "--role", "viewer", "--data", "late"])
    assert args.data == "late"


def test_users_add_with_data_at_the_end(tmp_path: Path) -> None:
    """The line from the issue, end to end: the user lands in the archive of --data, not elsewhere."""
    data = tmp_path / "data"
    proc = hilum(
        "users", "add", "alice", "--role", "admin", "--password-stdin", "--data", data, stdin="correct horse battery\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "added alice (admin)" in proc.stdout
    assert (data / "index.sqlite").exists()
    listed = hilum("users", "list", "--json", "--data", data)
    assert listed.returncode == 0, listed.stderr
    assert [(u["name"], u["role"]) for u in json.loads(listed.stdout)] == [("alice", "admin")]
    again = hilum("--data", data, "users", "role", "alice", "viewer", "-v")
    assert again.returncode == 0, again.stderr
    assert [u["role"] for u in json.loads(hilum("users", "--data", data, "list", "--json").stdout)] == ["viewer"]


def test_verbose_after_a_nested_command_takes_effect(tmp_path: Path) -> None:
    proc = hilum("hl7", "orders", "--data", tmp_path / "data", "-vv")
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG" in proc.stderr or "INFO" in proc.stderr
    quiet = hilum("hl7", "orders", "--data", tmp_path / "data")
    assert "DEBUG" not in quiet.stderr and "INFO" not in quiet.stderr

"""The configuration mechanism: defaults < config file < command line < --opts, with errors naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from stages.common.config import (
    fields_of,
    load_config_file,
    option,
    parse_opts,
    resolve_config,
    save_resolved_config,
)
from stages.common.errors import InputError


@dataclass
class Inner:
    ratio: float = option(0.5, "A ratio.")


@dataclass
class Toy:
    path: Path = option(help="Required path.")
    count: int = option(3, "A count.")
    mode: str = option("a", "A mode.", choices=("a", "b"))
    flag: bool = option(True, "A switch.")
    steps: tuple[float, ...] = (0.25, 0.75)
    maybe: int | None = None
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        if self.count < 0:
            raise InputError("count must be >= 0")


def test_levels_merge_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("path: x\ncount: 5\nmode: b\ninner:\n  ratio: 0.25\nsteps: [0.5]\n")
    cfg = resolve_config(Toy, f)
    assert (cfg.path, cfg.count, cfg.mode, cfg.inner.ratio) == (Path("x"), 5, "b", 0.25)
    assert cfg.steps == (0.5,) and isinstance(cfg.steps, tuple)
    cfg = resolve_config(Toy, f, {"count": 6, "inner.ratio": 0.75})
    assert (cfg.count, cfg.inner.ratio, cfg.mode) == (6, 0.75, "b")
    cfg = resolve_config(
        Toy, f, {"count": 6}, [("count", "7"), ("inner.ratio", "1"), ("maybe", "2")]
    )
    assert (cfg.count, cfg.inner.ratio, cfg.maybe) == (7, 1.0, 2)
    # defaults when nothing is given but the required path
    cfg = resolve_config(Toy, None, {"path": Path("p")})
    assert (cfg.count, cfg.mode, cfg.flag, cfg.steps, cfg.maybe) == (
        3,
        "a",
        True,
        (0.25, 0.75),
        None,
    )


@pytest.mark.parametrize(
    ("text", "opts", "match"),
    [
        ("path: x\ncuont: 5\n", None, "unknown setting 'cuont'"),
        ("path: x\ninner:\n  ratoi: 1\n", None, "inner.ratoi"),
        ("path: x\ncount: many\n", None, "count .*--count"),
        ("path: x\nflag: 3\n", None, "flag .*true or false"),
        ("path: x\nmode: c\n", None, "mode \\(--mode\\) must be one of a, b"),
        ("count: 1\n", None, "path \\(--path\\)"),
        ("path: x\n", [("count", "1.5")], "count .*--opts"),
        ("path: x\n", [("nope", "1")], "unknown setting 'nope' in --opts"),
        ("path: x\ncount: -1\n", None, "count must be >= 0"),
        ("- a\n- b\n", None, "must hold a mapping"),
    ],
)
def test_errors_name_the_key(tmp_path, text, opts, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=match):
        resolve_config(Toy, f, None, opts)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        resolve_config(Toy, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config_file(bad)


def test_a_saved_config_repeats_the_run(tmp_path):
    cfg = resolve_config(Toy, None, {"path": Path("p"), "count": 9, "inner.ratio": 0.125})
    saved = save_resolved_config(cfg, tmp_path / "run" / "config.yaml", note="x")
    doc = yaml.safe_load(saved.read_text())
    assert doc["config"]["count"] == 9 and doc["note"] == "x" and "sapnet_version" in doc["meta"]
    again = resolve_config(Toy, saved)
    assert again == cfg


def test_dashed_keys_in_files(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("path: x\ninner: {ratio: 0.1}\ncount: 2\n")
    assert load_config_file(f) == {"path": "x", "inner": {"ratio": 0.1}, "count": 2}
    f.write_text("path: x\nmaybe-not: 1\n")
    with pytest.raises(InputError, match="maybe_not"):
        resolve_config(Toy, f)


def test_parse_opts_like_detectron2():
    assert parse_opts(["A.B", "1", "c", "-2"]) == [("A.B", "1"), ("c", "-2")]
    assert parse_opts(["A.B=-1", "x=[1,2]", "y", "z"]) == [
        ("A.B", "-1"),
        ("x", "[1,2]"),
        ("y", "z"),
    ]
    assert parse_opts([]) == []
    with pytest.raises(InputError, match="'A.B' has no value"):
        parse_opts(["A.B"])


def test_fields_of_flattens_and_knows_flags():
    infos = {f.key: f for f in fields_of(Toy)}
    assert infos["inner.ratio"].flag == "--ratio" and infos["inner.ratio"].on_cli
    assert infos["flag"].flag == "--flag/--no-flag"
    assert infos["path"].required and not infos["count"].required
    assert not infos["steps"].on_cli and infos["steps"].default == (0.25, 0.75)


@dataclass
class WithMapping:
    weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0, "b": 1.0})


def test_a_mapping_given_at_a_level_replaces_the_lower_one(tmp_path):
    assert resolve_config(WithMapping).weights == {"a": 1.0, "b": 1.0}
    assert resolve_config(WithMapping, None, {"weights": {"b": 2.0}}).weights == {"b": 2.0}
    f = tmp_path / "c.yaml"
    f.write_text("weights: {a: 3}\n")
    assert resolve_config(WithMapping, f).weights == {"a": 3.0}
    with pytest.raises(InputError, match="weights"):
        resolve_config(WithMapping, None, {"weights": {"a": "x"}})

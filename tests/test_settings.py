"""rt_decoder.settings: the generic builder, validator and TOML renderer, on a toy tree."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import ClassVar

import pytest

from rt_decoder.errors import ConfigError
from rt_decoder.settings import SettingsDeprecationWarning, build, option, render_toml, section, to_dict, validate


@dataclass(frozen=True)
class Leaf:
    """leaf -- the innermost table."""

    rate_hz: float = option(30.0, "a rate", 1.0, 100.0)
    mode: str = option("a", "a mode", choices=("a", "b"))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Middle:
    """middle -- holds a leaf."""

    count: int = option(3, "a count", 0, 10)
    leaf: Leaf = section(Leaf, "the leaf, with a non-class default", default=Leaf(rate_hz=50.0))

    def __post_init__(self) -> None:
        validate(self)
        if self.count == 7:
            raise ConfigError("count must not be 7")


@dataclass(frozen=True)
class Root:
    """root -- the tree."""

    flag: bool = option(False, "a flag")
    name: str = option("x", "a name")
    middle: Middle = section(Middle)

    moved_keys: ClassVar[dict[str, str]] = {"count": "middle.count", "rate_hz": "middle.leaf.rate_hz"}


def test_nested_build_keeps_the_parents_defaults_and_converts_ints() -> None:
    r = build(Root, {"middle": {"leaf": {"mode": "b"}}})
    assert r.middle.leaf == Leaf(rate_hz=50.0, mode="b")      # the section's default, not Leaf()'s 30
    r = build(Root, {"middle": {"leaf": {"rate_hz": 2}}})
    assert r.middle.leaf.rate_hz == 2.0 and isinstance(r.middle.leaf.rate_hz, float)
    assert build(Root, {}) == Root() and to_dict(Root())["middle"]["leaf"] == {"rate_hz": 50.0, "mode": "a"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"middle": {"leaf": {"rte_hz": 1.0}}}, "[r.middle.leaf] has unknown key(s) ['rte_hz']; known: ['mode', "
                                                "'rate_hz']"),
        ({"middle": {"leaf": {"rate_hz": 500}}}, "[r.middle.leaf] rate_hz = 500.0 is above its maximum 100.0"),
        ({"middle": {"leaf": {"rate_hz": True}}}, "[r.middle.leaf] rate_hz must be a finite number, got True"),
        ({"middle": {"leaf": {"mode": "c"}}}, "[r.middle.leaf] mode must be one of a, b; got 'c'"),
        ({"middle": {"count": -1}}, "[r.middle] count = -1 is below its minimum 0"),
        ({"middle": {"count": 7}}, "[r.middle] count must not be 7"),
        ({"middle": []}, "[r.middle] must be a table"),
        ({"flag": "yes"}, "[r] flag must be true or false"),
    ],
)
def test_errors_name_the_dotted_section(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build(Root, data, path="r")
    assert message in str(exc.value)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"Leaf\.rate_hz = 0\.5 is below its minimum 1\.0"):
        Leaf(rate_hz=0.5)
    with pytest.raises(ConfigError, match=r"Leaf\.mode must be one of a, b"):
        Leaf(mode="z")


def test_moved_keys_load_at_their_new_place_with_a_warning() -> None:
    with pytest.warns(SettingsDeprecationWarning) as rec:
        r = build(Root, {"count": 4, "rate_hz": 9.0}, path="r")
    assert r == build(Root, {"middle": {"count": 4, "leaf": {"rate_hz": 9.0}}})
    assert sorted(str(w.message).split(":")[0] for w in rec) == [
        "[r] count is deprecated at this place", "[r] rate_hz is deprecated at this place"]
    assert "write it as [r.middle.leaf] rate_hz" in " ".join(str(w.message) for w in rec)
    with pytest.warns(SettingsDeprecationWarning), pytest.raises(ConfigError, match="same setting"):
        build(Root, {"count": 4, "middle": {"count": 5}})


def test_rendered_toml_documents_every_option_and_reads_back() -> None:
    tree = Root(flag=True, name='q"uote', middle=Middle(count=2, leaf=Leaf(mode="b")))
    text = "\n".join(render_toml(tree))
    assert "[middle]" in text and "[middle.leaf]" in text
    assert "# a rate (range 1.0..100.0)" in text and "# a mode (one of: a, b)" in text
    assert build(Root, tomllib.loads(text)) == tree
    commented = "\n".join(render_toml(Root(), "root", commented=True))
    assert "# flag = false" in commented and build(Root, tomllib.loads(commented).get("root", {})) == Root()

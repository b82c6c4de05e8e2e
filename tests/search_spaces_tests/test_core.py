"""The search-space core on small spaces whose answers can be checked by hand or enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nasvit.errors import UnknownNameError
from nasvit.search_spaces import (
    Architecture,
    ArchitectureError,
    Choice,
    LayerChoices,
    get_space,
)

from nasvit_testing.toy_spaces import ModelFreeSpace, lighthubert_like, staged


def test_size_matches_lighthubert_published_counts() -> None:
    base = lighthubert_like((512, 640, 768), (8, 10, 12), (3.5, 4.0), (12,))
    small = lighthubert_like((256, 384, 512), (4, 6, 8), (3.0, 3.5, 4.0), (10, 11, 12))
    assert base.size() == 6_530_347_008
    assert small.size() == 951_892_141_473


def test_size_matches_brute_force_enumeration_with_a_constraint() -> None:
    space = staged()
    count = 0
    for _res, d0, d1, extra, _act in itertools.product(
        (32, 64), (1, 2, 3), (1, 2), (0, 1, 2), "ab"
    ):
        if extra <= d1:
            count += 2 ** (d0 + d1)
    assert space.size() == count
    rng = np.random.default_rng(0)
    seen = {space.sample(rng) for _ in range(20_000)}
    assert len(seen) == count  # small enough that sampling reaches every point


def test_tied_values_are_derived_and_checked() -> None:
    space = lighthubert_like((256,), (4, 6), (4.0,), (2, 3))
    arch = space.validate({"embed_dim": 256, "layers": 2, "heads": [4, 6], "ffn_ratio": [4.0, 4.0]})
    assert arch["attention_dim"] == (256, 384)
    assert space.validate(arch.to_dict()) == arch
    with pytest.raises(ArchitectureError, match="attention_dim is derived from heads"):
        space.validate({**arch.to_dict(), "attention_dim": [256, 256]})
    # Tied dims are not searched: not in the encoding nor in the short string.
    assert space.encoding_length == 1 + 1 + 3 + 3
    assert "attention_dim" not in space.short_string(arch)
    rng = np.random.default_rng(0)
    for _ in range(20):
        sampled = space.sample(rng)
        assert sampled["attention_dim"] == tuple(64 * h for h in sampled["heads"])


def test_layer_lists_follow_depth_changes_under_mutation() -> None:
    space = staged()
    rng = np.random.default_rng(1)
    arch = space.sample(rng)
    for _ in range(200):
        arch = space.mutate(arch, rng, prob=0.5)
        assert len(arch["kernel"]) == sum(arch["depths"])
        assert arch["extra"] <= arch["depths"][1]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"resolution": 48}, r"resolution=48 is not allowed; allowed values: \{32, 64\}"),
        ({"depths": [4, 1]}, r"depths\[0\]=4 is not allowed; allowed values: \{1, 2, 3\}"),
        ({"depths": [1]}, r"depths must be a list of 2 values"),
        ({"kernel": [3]}, r"kernel must list one value per layer: 2 values for depths=\[1,1\]"),
        ({"kernel": [3, 7]}, r"kernel\[1\]=7 is not allowed; allowed values: \{3, 5\}"),
        ({"extra": 2}, r"constraint 'extra <= depths\[1\]' violated: extra=2, depths=\[1,1\]"),
        ({"act": "tanh"}, r"act='tanh' is not allowed; allowed values: \{relu, gelu\}"),
        ({"bogus": 1}, r"unknown dimension\(s\) bogus"),
    ],
)
def test_validation_names_the_bad_dimension_and_allowed_values(values, message) -> None:
    space = staged()
    good = {"resolution": 32, "depths": [1, 1], "extra": 0, "kernel": [3, 3], "act": "relu"}
    assert space.contains(good)
    with pytest.raises(ArchitectureError, match=message):
        space.validate({**good, **values})
    assert not space.contains({**good, **values})


def test_missing_dimension_is_reported() -> None:
    with pytest.raises(ArchitectureError, match="missing dimension 'act'"):
        staged().validate({"resolution": 32, "depths": [1, 1], "extra": 0, "kernel": [3, 3]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("r32_d1-1_x0_k3-3", None),
        ("r32_d1-1_x0_k3-3_arelu_arelu", "'act' given twice"),
        ("r32_d1-1_x0_k3-3_zz", "cannot read 'zz'"),
        ("r33_d1-1_x0_k3-3_arelu", "resolution: '33' is not one of"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "cannot read"),
    ],
)
def test_parse_errors_are_one_line(text: str, message: str | None) -> None:
    space = staged()
    with pytest.raises(ArchitectureError, match=message or "missing dimension 'act'") as info:
        space.parse(text)
    assert "\n" not in str(info.value)


def test_short_string_and_json_forms() -> None:
    space = staged()
    arch = space.validate(
        {"resolution": 64, "depths": [2, 1], "extra": 1, "kernel": [3, 5, 5], "act": "gelu"}
    )
    assert space.short_string(arch) == "r64_d2-1_x1_k3-5-5_agelu"
    assert space.to_json(arch) == (
        '{"resolution":64,"depths":[2,1],"extra":1,"kernel":[3,5,5],"act":"gelu"}'
    )
    assert isinstance(arch, Architecture) and hash(arch) == hash(space.parse(space.to_json(arch)))


def test_decode_rejects_wrong_lengths_and_indices() -> None:
    space = staged()
    with pytest.raises(ArchitectureError, match="has length"):
        space.decode([0, 0])
    code = space.encode(space.smallest())
    code[0] = 5
    with pytest.raises(ArchitectureError, match="out of range"):
        space.decode(code)


def test_extremes() -> None:
    space = staged()
    assert space.largest()["depths"] == (3, 2) and space.largest()["kernel"] == (5,) * 5
    assert space.smallest()["kernel"] == (3, 3)


def test_space_definitions_are_checked() -> None:
    with pytest.raises(ValueError, match="prefix-free"):
        ModelFreeSpace("bad", [Choice("a", (1,), "w"), Choice("b", (1,), "wd")])
    with pytest.raises(ValueError, match="length_from"):
        ModelFreeSpace("bad", [LayerChoices("k", (3,), "k", "nowhere")])
    with pytest.raises(ValueError, match="may not contain"):
        Choice("mixer", ("soft_max",), "x")


def test_unknown_space_suggests_the_closest_name() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'efficientformer'"):
        get_space("efficientformr")


def test_restriction_narrows_choices_and_keeps_the_rest() -> None:
    space = staged()
    narrow = space.restrict(resolution=[64], depths=[[1, 2], [2]], kernel=[5])
    assert narrow.restrictions == {"resolution": [64], "depths": [[1, 2], [2]], "kernel": [5]}
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = narrow.sample(rng)
        assert arch["resolution"] == 64 and arch["depths"][1] == 2 and set(arch["kernel"]) == {5}
        assert space.contains(arch)
    assert narrow.size() == 2 * 3 * 2  # d0 in {1,2}, extra in {0,1,2}, act in {relu,gelu}
    assert space.size() > narrow.size()  # the original is untouched
    assert not narrow.contains(space.largest())
    # Validations are recorded under the identity: a restricted space's differs from the
    # family's and from other restrictions', and is stable.
    assert space.identity == space.name
    assert narrow.identity.startswith(f"{space.name}[") and narrow.identity != space.identity
    again = space.restrict(resolution=[64], depths=[[1, 2], [2]], kernel=[5])
    assert narrow.identity == again.identity
    assert narrow.identity != space.restrict(resolution=[64]).identity


@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        ({"resolution": [48]}, r"resolution=48 is not allowed"),
        ({"resolution": []}, "at least one choice"),
        ({"depths": [[1]]}, "give 2 lists"),
        ({"nothing": [1]}, "unknown dimension"),
        ({"extra": [2], "depths": [[1], [1]]}, "leaves no architecture"),
    ],
)
def test_bad_restrictions_are_rejected(allowed, message) -> None:
    with pytest.raises(ArchitectureError, match=message):
        staged().restrict(**allowed)

"""LightHuBERT spaces: published subnet counts, DeiT reference points, layer-drop maps, lowering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasvit.search_spaces import ArchitectureError, get_space
from nasvit.search_spaces.lighthubert import LAYER_DROP_MAPS, LightHuBERTConfig, kept_layers

# LightHuBERT paper: number of subnets of each space (its encoder dimensions).
PUBLISHED_SUBNETS = {"lighthubert": 6_530_347_008, "lighthubert_small": 951_892_141_473}
# DeiT paper, 224x224, 1000 classes.
PUBLISHED_PARAMETERS = {
    ("lighthubert_small", "deit_small"): 22.1e6,
    ("lighthubert", "deit_base"): 86.6e6,
}


@pytest.fixture(scope="module")
def small():
    return get_space("lighthubert_small")


@pytest.mark.parametrize("name", sorted(PUBLISHED_SUBNETS))
def test_subnet_counts_match_the_paper(name: str) -> None:
    space = get_space(name)
    # The paper's count is the encoder's; the patch front end adds the resolution choice.
    assert space.restrict(resolution=[224]).size() == PUBLISHED_SUBNETS[name]
    resolutions = len(space.dimension("resolution").choices)
    assert space.size() == resolutions * PUBLISHED_SUBNETS[name]


@pytest.mark.parametrize(("space_name", "reference"), sorted(PUBLISHED_PARAMETERS))
def test_deit_is_a_point_with_the_published_parameter_count(
    space_name: str, reference: str
) -> None:
    space = get_space(space_name)
    assert set(space.reference_archs()) == {reference}
    subnet = space.build_subnet(space.reference_archs()[reference], num_classes=1000)
    parameters = sum(p.numel() for p in subnet.parameters())
    published = PUBLISHED_PARAMETERS[(space_name, reference)]
    assert abs(parameters / published - 1) <= 0.01, parameters


@pytest.mark.parametrize("name", sorted(PUBLISHED_SUBNETS))
def test_both_spaces_share_the_768_12_3072_12_supernet(name: str) -> None:
    transformer = get_space(name).config.transformer()
    assert (transformer.max_dim, transformer.max_heads) == (768, 12)
    assert (transformer.max_hidden, transformer.num_layers) == (3072, 12)
    assert transformer.head_dim == 64 and not transformer.norm_first  # post-LN


def test_layer_drop_maps_drop_inside_groups_of_four() -> None:
    assert kept_layers(12) == tuple(range(12))
    assert kept_layers(11) == tuple(range(11))  # drops layer 12
    assert kept_layers(10) == (0, 1, 2, 3, 4, 5, 6, 8, 9, 10)  # 1111 1110 1110
    assert kept_layers(6) == (0, 1, 4, 5, 8, 9)  # 1100 1100 1100
    for depth, mask in LAYER_DROP_MAPS.items():
        assert sum(mask) == depth and len(mask) == 12
        for group in range(3):  # a group keeps its first layers
            kept = mask[4 * group : 4 * group + 4]
            assert list(kept) == sorted(kept, reverse=True)
    with pytest.raises(ArchitectureError, match="no layer-drop map for 5 layers"):
        kept_layers(5)


def test_supernet_runs_exactly_the_kept_layers(small) -> None:
    torch.manual_seed(0)
    supernet = small.build_supernet(num_classes=10).eval()
    arch = small.validate(
        {
            "resolution": 32,
            "embed_dim": 256,
            "layers": 10,
            "heads": [4] * 10,
            "ffn_ratio": [3.0] * 10,
        }
    )
    called: list[int] = []
    handles = [
        layer.register_forward_pre_hook(lambda _m, _a, i=i: called.append(i))
        for i, layer in enumerate(supernet.layers)
    ]
    x = torch.randn(small.input_shape(arch, batch=2))
    with torch.no_grad():
        before = supernet(x, arch)
        for handle in handles:
            handle.remove()
        assert called == list(kept_layers(10))
        supernet.layers[7].ffn.fc1.weight.add_(1.0)  # a dropped layer: no effect
        assert torch.equal(supernet(x, arch), before)
        supernet.layers[8].ffn.fc1.weight.add_(1.0)  # the 8th subnet layer
        assert not torch.allclose(supernet(x, arch), before)


def test_lowered_attention_keys_grow_with_the_token_count(small) -> None:
    reference = small.reference_archs()["deit_small"]
    kinds = [spec.kind for spec in small.lower(reference)]
    assert kinds == (
        ["transformer.patch_embed"]
        + ["transformer.softmax", "transformer.ffn"] * 12
        + ["transformer.head"]
    )
    tokens = []
    for side in (32, 64, 128, 224):
        attention = small.lower(reference.replace(resolution=side))[1]
        tokens.append(attention.input_shape[1])
        assert f"in=1x{tokens[-1]}x384" in attention.key
        assert "heads=6" in attention.key
    assert tokens == [4, 16, 64, 196]


def test_restricted_enumeration_covers_exactly_what_lowering_reaches(small) -> None:
    restricted = small.restrict(resolution=[32], embed_dim=[256, 384], heads=[4, 6])
    keys = {b.key for b in restricted.enumerate_blocks(num_classes=10)}
    rng = np.random.default_rng(0)
    lowered = set()
    for _ in range(200):
        lowered |= {b.key for b in restricted.lower(restricted.sample(rng), num_classes=10)}
    assert lowered == keys  # nothing missing, nothing unreachable
    assert keys < {b.key for b in small.enumerate_blocks(num_classes=10)}


def test_bad_architectures_and_configurations_are_rejected(small) -> None:
    good = small.smallest().to_dict()
    with pytest.raises(ArchitectureError, match="layers=9 is not allowed"):
        small.validate({**good, "layers": 9})
    with pytest.raises(ArchitectureError, match="heads must list one value per layer"):
        small.validate({**good, "heads": [4] * 3})
    with pytest.raises(ArchitectureError, match="ffn_ratio\\[0\\]=2.5 is not allowed"):
        small.validate({**good, "ffn_ratio": [2.5] + [3.0] * 9})
    with pytest.raises(ArchitectureError, match="not in the space"):
        small.enumerate_blocks(resolutions=[100])
    with pytest.raises(ValueError, match="exceeds the supernet"):
        LightHuBERTConfig(embed_dims=(512, 1024))
    with pytest.raises(ValueError, match="layer-drop"):
        LightHuBERTConfig(layers=(4,))


@pytest.mark.parametrize("name", sorted(PUBLISHED_SUBNETS))
def test_default_digits_recipe_keeps_a_choice_of_subnets(name: str) -> None:
    from nasvit.training.default_supernet import recipe_for

    recipe = recipe_for(name)
    restricted = get_space(name).restrict(**recipe.restrictions)
    assert restricted.dimension("resolution").choices[0] == 32  # 8x8 digits, 4 tokens
    assert restricted.size() > 1000
    assert recipe.train.sampling == "uniform"  # LightHuBERT samples one subnet per step

"""EfficientFormer-specific facts: published parameter counts, every resolution, lowering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasvit.search_spaces import ArchitectureError, get_space

# Published counts include the distillation head (EfficientFormer paper, Table 1).
PUBLISHED_PARAMETERS = {
    "efficientformer_l1": 12.3e6,
    "efficientformer_l3": 31.3e6,
    "efficientformer_l7": 82.1e6,
}


@pytest.fixture(scope="module")
def space():
    return get_space("efficientformer")


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_reference_parameter_counts_match_the_paper(space, name: str) -> None:
    subnet = space.build_subnet(space.reference_archs()[name], num_classes=1000)
    parameters = sum(p.numel() for p in subnet.parameters())
    assert abs(parameters / PUBLISHED_PARAMETERS[name] - 1) <= 0.01, parameters


def test_l1_structure(space) -> None:
    l1 = space.reference_archs()["efficientformer_l1"]
    kinds = [spec.kind.split(".")[1] for spec in space.lower(l1)]
    assert kinds == (
        ["stem"]
        + ["mb4d"] * 3
        + ["downsample"]
        + ["mb4d"] * 2
        + ["downsample"]
        + ["mb4d"] * 6
        + ["downsample"]
        + ["mb4d"] * 3
        + ["mb3d"]
        + ["head"]
    )
    attention = [spec for spec in space.lower(l1) if spec.kind.endswith("mb3d")][0]
    assert attention.input_shape == (1, 448, 7, 7) and attention.output_shape == (1, 49, 448)


def test_space_reaches_well_below_l1(space) -> None:
    smallest = space.build_subnet(space.smallest(), num_classes=1000)
    assert (
        sum(p.numel() for p in smallest.parameters())
        < 0.1 * PUBLISHED_PARAMETERS["efficientformer_l1"]
    )
    assert min(space.dimension("resolution").choices) <= 32


@pytest.mark.parametrize("resolution", [32, 64, 96, 128, 160, 192, 224])
def test_attention_bias_works_at_every_resolution(space, resolution: int) -> None:
    arch = space.validate(
        {
            "resolution": resolution,
            "widths": [16, 32, 64, 128],
            "depths": [1, 1, 1, 3],
            "vit_num": 3,
            "mlp_ratio": [3] * 6,
        }
    )
    torch.manual_seed(0)
    supernet = space.build_supernet(num_classes=10).eval()
    grid = -(-resolution // 32)
    with torch.no_grad():
        for block in supernet.vit_blocks:  # a bias that differs per offset
            block.attn.attention_biases.normal_()
            block.ls1.scale.fill_(1.0)
        x = torch.randn(space.input_shape(arch, batch=2))
        expected = supernet(x, arch)
        subnet = supernet.extract(arch).eval()
        assert torch.allclose(subnet(x), expected, atol=1e-5)
    attention = [m for m in subnet.modules() if hasattr(m, "bias_index")][0]
    assert attention.bias_index.shape == (grid * grid, grid * grid)
    # The bias depends on the offset only: token pairs with equal offsets share an entry.
    assert attention.bias_index[0, 0] == 0


def test_training_a_subnet_updates_only_its_slice_of_batchnorm(space) -> None:
    supernet = space.build_supernet(num_classes=10).train()
    arch = space.smallest()
    running_mean = supernet.stem.bn2.running_mean
    supernet(torch.randn(space.input_shape(arch, batch=4)) * 3 + 1, arch)
    width = arch["widths"][0]
    assert running_mean[:width].abs().sum() > 0
    assert running_mean[width:].abs().sum() == 0


def test_enumerate_blocks_rejects_unknown_resolutions(space) -> None:
    with pytest.raises(ArchitectureError, match="not in the space"):
        space.enumerate_blocks(resolutions=[100])
    keys = {b.key for b in space.enumerate_blocks(resolutions=[32])}
    arch = space.sample(np.random.default_rng(0)).replace(resolution=32)
    assert all(spec.key in keys for spec in space.lower(arch))


def test_block_keys_are_versioned_and_shape_specific(space) -> None:
    l1 = space.reference_archs()["efficientformer_l1"]
    keys = [spec.key for spec in space.lower(l1)]
    assert all(key.startswith("nasvit-block/1|efficientformer.") for key in keys)
    small = [spec.key for spec in space.lower(l1.replace(resolution=128))]
    assert not set(keys) & set(small)


def test_restricted_space_shares_the_supernet_and_drops_unreachable_references(space) -> None:
    small = space.restrict(resolution=[32, 64])
    assert small.reference_archs() == {}
    assert set(space.reference_archs()) == set(PUBLISHED_PARAMETERS)
    full_keys = set(space.build_supernet(num_classes=10).state_dict())
    assert set(small.build_supernet(num_classes=10).state_dict()) == full_keys


@pytest.mark.parametrize(
    "restriction",
    [
        {"resolution": [32], "widths": [[16, 32], [32], [64, 96], [128, 192]]},
        {"resolution": [64], "vit_num": [4, 5], "depths": [[1], [2], [1, 3], [6, 8]]},
        {"resolution": [32], "vit_num": [0], "mlp_ratio": [3]},
    ],
)
def test_restricted_enumeration_covers_exactly_what_lowering_reaches(space, restriction) -> None:
    restricted = space.restrict(**restriction)
    keys = {b.key for b in restricted.enumerate_blocks(num_classes=10)}
    rng = np.random.default_rng(0)
    lowered = set()
    for _ in range(300):
        lowered |= {b.key for b in restricted.lower(restricted.sample(rng), num_classes=10)}
    assert lowered <= keys
    full = {b.key for b in space.enumerate_blocks(num_classes=10)}
    assert keys < full  # the restriction shrinks the table to build


@pytest.mark.parametrize("shape", [{}, {"batch": 4, "num_classes": 10, "in_channels": 1}])
def test_memoised_lowering_gives_the_plans_blocks(space, shape) -> None:
    """``lower`` reads blocks from a per-block memo; it must give exactly the specs of the
    block plan that extraction uses, in order, for every kind of arch (with and without
    attention blocks, every resolution), also in a restricted copy of the space."""
    from nasvit.search_spaces.efficientformer import _plan, _spec

    batch, classes, channels = (shape.get(k, d) for k, d in [
        ("batch", 1), ("num_classes", 1000), ("in_channels", 3)
    ])  # fmt: skip
    rng = np.random.default_rng(3)
    archs = [space.sample(rng) for _ in range(300)]
    archs += [a.replace(vit_num=0) for a in archs[:30]]
    archs += [a.replace(vit_num=a["depths"][3]) for a in archs[:30]]
    archs += list(space.reference_archs().values()) + [space.smallest(), space.largest()]
    for copy in (space, space.restrict(mlp_ratio=[3, 4])):
        for arch in archs:
            expected = [_spec(s) for s in _plan(arch, space.config, channels, classes, batch)]
            lowered = copy.lower(arch, **shape)
            assert lowered == expected
            assert [b.key for b in lowered] == [b.key for b in expected]
    with pytest.raises(ValueError, match="mlp_ratio"):
        space.lower({**archs[0].to_dict(), "mlp_ratio": (4,)})


def test_extracted_blocks_match_blocks_built_normally(space) -> None:
    """extract fills empty block shells layer by layer; the result must be the block its
    constructor builds (same attributes, same tensors in the same order), with the weights."""
    supernet = space.build_supernet(num_classes=10, in_channels=1)
    rng = np.random.default_rng(5)
    archs = [space.largest(), space.smallest(), space.sample(rng).replace(vit_num=0)]
    for arch in archs + [space.sample(rng) for _ in range(3)]:
        extracted = list(supernet.extract(arch))
        built = [spec.build() for spec in space.lower(arch, num_classes=10, in_channels=1)]
        assert [type(b) for b in extracted] == [type(b) for b in built]
        for got, want in zip(extracted, built, strict=True):
            assert _plain_attributes(got) == _plain_attributes(want)
            got_state, want_state = got.state_dict(), want.state_dict()
            assert list(got_state) == list(want_state)
            assert all(got_state[k].shape == want_state[k].shape for k in want_state)
            assert [type(m) for m in got.modules()] == [type(m) for m in want.modules()]


def _plain_attributes(module: torch.nn.Module) -> dict:
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}

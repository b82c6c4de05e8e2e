"""attention_variants: DeiT-Ti, every mixer's extraction and ONNX parity, no weight sharing
between mixers, lowering per mixer and token count, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasvit.nn.transformer import MIXERS
from nasvit.onnx_export import export_onnx, run_onnx
from nasvit.search_spaces import ArchitectureError, get_space
from nasvit.search_spaces.attention_variants import AttentionVariantsConfig


@pytest.fixture(scope="module")
def space():
    return get_space("attention_variants")


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    net = space.build_supernet(num_classes=10).eval()
    with torch.no_grad():  # a position bias that matters for the output
        for name, parameter in net.named_parameters():
            if "attention_biases" in name:
                parameter.normal_(0.0, 0.5)
    return net


def _arch(space, mixers, resolution=64, dim=128, heads=(2, 3), ratios=(2, 4)):
    return space.validate(
        {
            "resolution": resolution,
            "embed_dim": dim,
            "depth": len(mixers),
            "mixer": list(mixers),
            "heads": list(heads)[: len(mixers)],
            "mlp_ratio": list(ratios)[: len(mixers)],
        }
    )


def test_deit_tiny_is_a_point_with_the_published_parameter_count(space) -> None:
    deit = space.reference_archs()["deit_tiny"]
    parameters = sum(p.numel() for p in space.build_subnet(deit).parameters())
    assert abs(parameters / 5.7e6 - 1) <= 0.01, parameters


@pytest.mark.parametrize("mixer", MIXERS)
def test_every_mixer_extracts_and_exports_with_matching_output(
    space, supernet, mixer: str, tmp_path
) -> None:
    arch = _arch(space, [mixer, mixer])
    x = torch.randn(space.input_shape(arch, batch=2))
    subnet = supernet.extract(arch).eval()
    with torch.no_grad():
        expected = supernet(x, arch)
        assert (subnet(x) - expected).abs().max() <= 1e-5
        reference = subnet(x[:1]).numpy()
    path = export_onnx(subnet, space.input_shape(arch), tmp_path / f"{mixer}.onnx")
    assert np.abs(run_onnx(path, x[:1].numpy()) - reference).max() <= 1e-4


def test_mixers_share_no_weights_but_share_the_ffn(space, supernet) -> None:
    linear = _arch(space, ["linear", "linear"])
    softmax = _arch(space, ["softmax", "softmax"])
    x = torch.randn(space.input_shape(linear, batch=2))
    layer = supernet.layers[0]
    with torch.no_grad():
        before_linear, before_softmax = supernet(x, linear), supernet(x, softmax)
        saved = layer.mixers["softmax"].qkv.weight.clone()
        # Random: a constant shift cancels on LayerNorm-ed (zero-mean) tokens.
        layer.mixers["softmax"].qkv.weight.add_(torch.randn_like(saved))
        assert torch.equal(supernet(x, linear), before_linear)
        assert not torch.allclose(supernet(x, softmax), before_softmax)
        layer.mixers["softmax"].qkv.weight.copy_(saved)
        saved = layer.ffn.fc1.weight.clone()
        layer.ffn.fc1.weight.add_(torch.randn_like(saved))
        assert not torch.allclose(supernet(x, linear), before_linear)
        assert not torch.allclose(supernet(x, softmax), before_softmax)
        layer.ffn.fc1.weight.copy_(saved)
    assert set(layer.mixers) == set(MIXERS) - {"identity"}


def test_heads_matter_only_to_mixers_with_heads(space, supernet) -> None:
    x = torch.randn(1, 3, 64, 64)
    for mixer, matters in [("pool", False), ("shsa", False), ("linear", True), ("relpos", True)]:
        one, six = _arch(space, [mixer], heads=(1,)), _arch(space, [mixer], heads=(6,))
        with torch.no_grad():
            same = torch.allclose(supernet(x, one), supernet(x, six))
        assert same is not matters, mixer
        keys = [b.key for b in space.lower(one)], [b.key for b in space.lower(six)]
        assert (keys[0] == keys[1]) is not matters, mixer


def test_lowering_has_a_block_per_mixer_and_keys_grow_with_tokens(space) -> None:
    arch = _arch(space, ["identity", "relpos", "pool"], heads=(1, 2, 3), ratios=(2, 3, 4))
    kinds = [b.kind.split(".")[1] for b in space.lower(arch)]
    assert kinds == ["patch_embed", "ffn", "relpos", "ffn", "pool", "ffn", "head"]
    for mixer in ["softmax", "linear", "shsa", "relpos", "pool"]:
        tokens = []
        for side in (32, 64, 128, 224):
            block = space.lower(_arch(space, [mixer], resolution=side))[1]
            assert block.kind == f"transformer.{mixer}"
            tokens.append(block.input_shape[1])
            assert f"in=1x{tokens[-1]}x128" in block.key
        assert tokens == [4, 16, 64, 196]


@pytest.mark.parametrize("resolution", [32, 96, 224])
def test_relative_position_bias_works_at_every_resolution(space, supernet, resolution) -> None:
    arch = _arch(space, ["relpos"], resolution=resolution)
    x = torch.randn(space.input_shape(arch, batch=2))
    with torch.no_grad():
        assert torch.allclose(supernet.extract(arch).eval()(x), supernet(x, arch), atol=1e-5)


def test_restricted_enumeration_covers_exactly_what_lowering_reaches(space) -> None:
    restricted = space.restrict(
        resolution=[64], embed_dim=[64, 128], depth=[1, 2, 3], heads=[1, 2], mlp_ratio=[2, 4]
    )
    keys = {b.key for b in restricted.enumerate_blocks(num_classes=10)}
    rng = np.random.default_rng(0)
    lowered = set()
    for _ in range(400):
        lowered |= {b.key for b in restricted.lower(restricted.sample(rng), num_classes=10)}
    assert lowered == keys
    assert keys < {b.key for b in space.enumerate_blocks(resolutions=[64], num_classes=10)}


def test_bad_architectures_and_configurations_are_rejected(space) -> None:
    good = _arch(space, ["softmax", "pool"]).to_dict()
    with pytest.raises(ArchitectureError, match="mixer\\[1\\]='conv' is not allowed"):
        space.validate({**good, "mixer": ["softmax", "conv"]})
    with pytest.raises(ArchitectureError, match="depth=15 is not allowed"):
        space.validate({**good, "depth": 15})
    with pytest.raises(ArchitectureError, match="cannot read"):
        space.parse("r64_e128_q2")
    with pytest.raises(ValueError, match="unknown mixer"):
        AttentionVariantsConfig(mixers=("softmax", "conv"))


def test_default_digits_recipe_keeps_every_mixer(space) -> None:
    from nasvit.training.default_supernet import recipe_for

    restricted = space.restrict(**recipe_for("attention_variants").restrictions)
    assert restricted.dimension("mixer").choices == MIXERS
    tokens = restricted.lower(restricted.largest())[1].input_shape[1]
    assert tokens == 16  # a 4x4 grid for the pooling and relative-position mixers

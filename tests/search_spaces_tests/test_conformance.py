"""Conformance suite every registered search space must pass (generated from the registry)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nasvit.nn import Supernet
from nasvit.onnx_export import export_onnx, run_onnx
from nasvit.search_spaces import SearchSpace, get_space, space_names

SPACES = space_names()


@pytest.fixture(scope="module", params=SPACES)
def space(request: pytest.FixtureRequest) -> SearchSpace:
    return get_space(request.param)


@pytest.fixture(scope="module")
def supernet(space: SearchSpace) -> Supernet:
    """A supernet whose every parameter and statistic matters for the output.

    Freshly initialised LayerScales (1e-5) would make residual branches invisible, so parity
    could hold while the branch code differed: give them and BN statistics non-trivial values.
    """
    torch.manual_seed(0)
    net = space.build_supernet(num_classes=10)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if "scale" in name:
                parameter.uniform_(0.2, 0.6)
            elif "attention_biases" in name:
                parameter.normal_(0.0, 0.5)
        for name, buffer in net.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buffer.normal_(0.0, 0.2)
    return net.eval()


def test_registry_lists_efficientformer() -> None:
    assert "efficientformer" in SPACES


def test_samples_are_members_and_within_bounds(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        arch = space.sample(rng)
        assert space.contains(arch)
        code = space.encode(arch)
        assert code.shape == (space.encoding_length,)
        assert code.min() >= -1


def test_sampling_is_deterministic_for_a_seed(space: SearchSpace) -> None:
    def draw(seed: int) -> list:
        rng = np.random.default_rng(seed)
        return [space.sample(rng) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampling_covers_every_choice_of_scalar_dimensions(space: SearchSpace) -> None:
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(400)]
    for dim in space.searched_dimensions:
        if hasattr(dim, "choices") and not isinstance(dim.choices[0], tuple):
            if type(dim).__name__ == "Choice":
                assert {a[dim.name] for a in archs} == set(dim.choices), dim.name


def test_mutation_and_crossover_stay_in_the_space(space: SearchSpace) -> None:
    rng = np.random.default_rng(2)
    parents = [space.sample(rng) for _ in range(30)]
    changed = 0
    for first, second in zip(parents, parents[1:], strict=False):
        child = space.mutate(first, rng, prob=0.3)
        assert space.contains(child)
        changed += child != first
        mixed = space.crossover(first, second, rng)
        assert space.contains(mixed)
        for name in mixed:  # every scalar value comes from a parent
            if not isinstance(mixed[name], tuple):
                assert mixed[name] in (first[name], second[name])
    assert changed > 20


def test_encode_decode_and_text_forms_round_trip(space: SearchSpace) -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.decode(space.encode(arch)) == arch
        assert space.parse(space.short_string(arch)) == arch
        assert space.parse(space.to_json(arch)) == arch
        assert json.loads(space.to_json(arch)) == arch.to_dict()


def test_extremes_and_references_are_members(space: SearchSpace) -> None:
    assert space.contains(space.largest())
    assert space.contains(space.smallest())
    for name, arch in space.reference_archs().items():
        assert space.contains(arch), name
    assert space.size() > 1


def test_extraction_matches_supernet(space: SearchSpace, supernet: Supernet) -> None:
    rng = np.random.default_rng(4)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(4)]
    for arch in archs:
        x = torch.randn(space.input_shape(arch, batch=2))
        subnet = supernet.extract(arch)
        # extract builds layers uninitialised (on the meta device, or skip_init) and copies in
        # every tensor; the output check below fails on any left uninitialised.
        assert not any(t.is_meta for t in subnet.state_dict().values())
        with torch.no_grad():
            expected = supernet(x, arch)
            got = subnet(x)
        assert got.shape == (2, 10)
        assert expected.abs().max() > 1e-3  # the output carries signal
        assert (got - expected).abs().max().item() <= 1e-5, space.short_string(arch)


def test_extracted_subnet_owns_a_copy_of_the_weights(
    space: SearchSpace, supernet: Supernet
) -> None:
    arch = space.smallest()
    subnet = supernet.extract(arch)
    x = torch.randn(space.input_shape(arch))
    with torch.no_grad():
        before = subnet(x)
        for parameter in subnet.parameters():
            parameter.add_(1.0)
        assert (supernet(x, arch) - before).abs().max() <= 1e-5  # supernet untouched


def test_subnet_exports_to_onnx_with_matching_output(
    space: SearchSpace, supernet: Supernet, tmp_path
) -> None:
    rng = np.random.default_rng(5)
    for index in range(2):
        arch = space.sample(rng)
        subnet = supernet.extract(arch)
        shape = space.input_shape(arch)
        path = export_onnx(subnet, shape, tmp_path / f"subnet{index}.onnx")
        x = torch.randn(shape)
        with torch.no_grad():
            expected = subnet(x).numpy()
        assert np.abs(run_onnx(path, x.numpy()) - expected).max() <= 1e-4


def test_lowered_blocks_compose_to_the_network(space: SearchSpace) -> None:
    rng = np.random.default_rng(6)
    arch = space.sample(rng)
    blocks = space.lower(arch, num_classes=10)
    assert blocks[0].input_shape == space.input_shape(arch)
    x = torch.randn(blocks[0].input_shape)
    with torch.no_grad():
        for spec, following in zip(blocks, blocks[1:] + [None], strict=True):
            x = spec.build()(x)
            assert tuple(x.shape) == spec.output_shape, spec.key
            if following is not None:
                assert following.input_shape == spec.output_shape
    assert tuple(x.shape) == (1, 10)


def test_enumerated_blocks_cover_every_lowered_block(space: SearchSpace) -> None:
    rng = np.random.default_rng(7)
    archs = [space.sample(rng) for _ in range(200)] + [space.largest(), space.smallest()]
    keys = {spec.key for spec in space.enumerate_blocks(num_classes=10)}
    for arch in archs:
        for spec in space.lower(arch, num_classes=10):
            assert spec.key in keys, spec.key

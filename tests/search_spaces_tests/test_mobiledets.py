"""MobileDets-specific facts: block types, the released backbones, CPU vs accelerator, skips.

Block-level tests run on small configurations of the two variants (width multipliers 0.25 and
0.5, resolutions 32 and 64) so their supernets build in milliseconds; the registered spaces are used
where the published shapes matter (reference backbones, sizes, the default recipe).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nasvit.nn.mobile import (
    FusedInvertedBottleneck,
    InvertedBottleneck,
    SqueezeExcite,
    TuckerBlock,
)
from nasvit.onnx_export import export_onnx, run_onnx
from nasvit.search_spaces import ArchitectureError, get_space
from nasvit.search_spaces.mobiledets import MobileDetConfig, MobileDetSpace, parse_op
from nasvit.training.default_supernet import recipe_for

SMALL = {"resolutions": (32, 64), "filter_multipliers": (0.25, 0.5)}
STATIC = {"ibn": InvertedBottleneck, "fused": FusedInvertedBottleneck, "tucker": TuckerBlock}
FIRST_LAYERS = (0, 1, 5, 9, 13, 17, 21)  # first layer of stages 0..6 (never skipped)


@pytest.fixture(scope="module")
def small_spaces() -> dict[str, MobileDetSpace]:
    return {v: MobileDetSpace(MobileDetConfig(variant=v, **SMALL)) for v in ("cpu", "accelerator")}


@pytest.fixture(scope="module")
def supernets(small_spaces):
    """Supernets whose BatchNorm statistics and scales are not the identity (residual
    branches start scaled by 0.1), so every layer matters."""
    nets = {}
    for variant, space in small_spaces.items():
        torch.manual_seed(0)
        net = space.build_supernet(num_classes=10)
        with torch.no_grad():
            for name, buffer in net.named_buffers():
                if name.endswith("running_var"):
                    buffer.uniform_(0.5, 2.0)
                elif name.endswith("running_mean"):
                    buffer.normal_(0.0, 0.2)
            for name, parameter in net.named_parameters():
                if name.endswith("bn.weight"):
                    parameter.uniform_(0.5, 1.5)
        nets[variant] = net.eval()
    return nets


def _all_of(space: MobileDetSpace, block: str, resolution: int) -> dict:
    """Every layer runs ``block`` where it may (cycling through its kernels and expansions or
    ratios), otherwise its largest choice; the smallest widths, so channels are sliced."""
    ops = []
    for position, choices in enumerate(space.dimension("ops").choices):
        matching = [t for t in choices if parse_op(t).block == block]
        ops.append(matching[position % len(matching)] if matching else choices[-1])
    widths = space.smallest()["widths"]
    return space.validate({"resolution": resolution, "widths": widths, "ops": ops})


@pytest.mark.parametrize(
    ("variant", "block"),
    [("cpu", "ibn"), ("accelerator", "ibn"), ("accelerator", "fused"), ("accelerator", "tucker")],
)
@pytest.mark.parametrize("resolution", [32, 64])
def test_each_block_type_extracts_and_exports_with_matching_output(
    small_spaces, supernets, variant: str, block: str, resolution: int, tmp_path: Path
) -> None:
    space, supernet = small_spaces[variant], supernets[variant]
    arch = _all_of(space, block, resolution)
    subnet = supernet.extract(arch).eval()
    runs = [m for m in subnet if isinstance(m, STATIC[block])]
    assert len(runs) == (21 if block == "fused" else 22)  # stage 0 has no fused IBN
    kernels = {parse_op(t).kernel for t in arch["ops"] if parse_op(t).block == block}
    assert kernels == ({3} if block == "tucker" else {3, 5})
    x = torch.randn(space.input_shape(arch, batch=2))
    with torch.no_grad():
        expected = supernet(x, arch)
        got = subnet(x)
    assert expected.abs().max() > 1e-3
    assert (got - expected).abs().max().item() <= 1e-5
    path = export_onnx(subnet, space.input_shape(arch), tmp_path / "subnet.onnx")
    single = x[:1]
    with torch.no_grad():
        reference = subnet(single).numpy()
    assert np.abs(run_onnx(path, single.numpy()) - reference).max() <= 1e-4


def test_smaller_kernels_are_centre_crops_of_the_shared_weight(small_spaces, supernets) -> None:
    space, supernet = small_spaces["accelerator"], supernets["accelerator"]
    ops = list(space.largest()["ops"])
    ops[2], ops[3] = "ibn3e4", "fused3e8"
    arch = space.validate({**dict(space.largest()), "ops": ops})
    subnet = supernet.extract(arch)
    ibn, fused = subnet[3], subnet[4]  # stem, layers 0 and 1, then layers 2 and 3
    width = arch["widths"][2]
    shared_dw = supernet.layers[2]["ibn"].depthwise.conv.weight
    assert shared_dw.shape[-1] == 5 and ibn.depthwise.conv.weight.shape[-1] == 3
    assert torch.equal(ibn.depthwise.conv.weight, shared_dw[: width * 4, :, 1:4, 1:4])
    shared_full = supernet.layers[3]["fused"].expand.conv.weight
    assert torch.equal(fused.expand.conv.weight, shared_full[: width * 8, :width, 1:4, 1:4])


# --------------------------------------------------------------------------- released backbones
def _round8(value: float) -> int:
    return max(8, int(value / 8 + 0.5) * 8)


def _conv_bn(kernel: int, cin: int, cout: int) -> int:
    return kernel * kernel * cin * cout + 2 * cout


def _released_parameters(stem: int, layers: list[tuple], se: bool, classes: int) -> int:
    """Trainable parameters of a released backbone written as in the TF release: every conv
    has BatchNorm (gamma, beta) and no bias; squeeze-excite convs have biases and no BN."""

    def squeeze_excite(c: int) -> int:
        hidden = _round8(c / 4)
        return 2 * c * hidden + hidden + c

    total, cin = _conv_bn(3, 3, stem), stem
    for kind, cout, kernel, *rest in layers:
        if kind == "tucker":
            r_in, r_out = _round8(rest[0] * cin), _round8(rest[1] * cout)
            total += (
                _conv_bn(1, cin, r_in) + _conv_bn(kernel, r_in, r_out) + _conv_bn(1, r_out, cout)
            )
        else:
            wide = cin * rest[0]
            if kind == "ibn":
                total += (_conv_bn(1, cin, wide) if rest[0] > 1 else 0) + kernel * kernel * wide
                total += 2 * wide
            else:
                total += _conv_bn(kernel, cin, wide)
            total += (squeeze_excite(wide) if se else 0) + _conv_bn(1, wide, cout)
        cin = cout
    return total + cin * classes + classes


# (block, output filters, kernel, expansion | input ratio, output ratio), in release order.
RELEASED = {
    ("mobiledets", "mobiledet_cpu"): (
        16,
        [("ibn", 8, 3, 1), ("ibn", 16, 3, 4), ("ibn", 32, 3, 8)]
        + [("ibn", 32, 3, 4)] * 3
        + [("ibn", 72, 5, 8), ("ibn", 72, 3, 8), ("ibn", 72, 5, 4), ("ibn", 72, 3, 4)]
        + [("ibn", 72, 3, 8)] * 4
        + [("ibn", 104, 5, 8), ("ibn", 104, 5, 4), ("ibn", 104, 5, 4), ("ibn", 104, 3, 4)]
        + [("ibn", 144, 3, 8)],
        True,
    ),
    ("mobiledets_accelerator", "mobiledet_dsp"): (
        32,
        [("ibn", 24, 3, 1), ("fused", 32, 3, 4), ("fused", 32, 3, 4), ("ibn", 32, 3, 4)]
        + [("tucker", 32, 3, 0.25, 0.75), ("fused", 64, 3, 8), ("ibn", 64, 3, 4)]
        + [("fused", 64, 3, 4)] * 2
        + [("fused", 120, 3, 8), ("ibn", 120, 3, 4), ("ibn", 120, 3, 8), ("ibn", 120, 3, 8)]
        + [("fused", 144, 3, 8)]
        + [("ibn", 144, 3, 8)] * 3
        + [("ibn", 160, 3, 4), ("ibn", 160, 3, 4), ("fused", 160, 3, 4)]
        + [("tucker", 160, 3, 0.75, 0.75), ("ibn", 240, 3, 8)],
        False,
    ),
    ("mobiledets_accelerator", "mobiledet_edgetpu"): (
        32,
        [("tucker", 16, 3, 0.25, 0.75), ("fused", 16, 3, 8), ("fused", 16, 3, 4)]
        + [("fused", 16, 3, 8), ("fused", 16, 3, 4), ("fused", 40, 5, 8)]
        + [("fused", 40, 3, 4)] * 3
        + [("ibn", 72, 3, 8), ("ibn", 72, 3, 8), ("fused", 72, 3, 4), ("fused", 72, 3, 4)]
        + [("ibn", 96, 5, 8), ("ibn", 96, 5, 8), ("ibn", 96, 3, 8), ("ibn", 96, 3, 8)]
        + [("ibn", 120, 5, 8), ("ibn", 120, 3, 8), ("ibn", 120, 5, 4), ("ibn", 120, 3, 8)]
        + [("ibn", 384, 5, 8)],
        False,
    ),
}


@pytest.mark.parametrize(("space_name", "name"), sorted(RELEASED))
def test_released_backbones_are_points_with_their_parameter_count(space_name, name) -> None:
    space = get_space(space_name)
    arch = space.reference_archs()[name]
    stem, layers, se = RELEASED[(space_name, name)]
    subnet = space.build_subnet(arch, num_classes=1000)
    parameters = sum(p.numel() for p in subnet.parameters())
    assert parameters == _released_parameters(stem, layers, se, 1000)
    blocks = [
        spec
        for spec in space.lower(arch)
        if spec.kind not in ("mobiledets.stem", "mobiledets.head")
    ]
    assert [(b.kind.split(".")[1], b.output_shape[1]) for b in blocks] == [
        (kind, filters) for kind, filters, *_ in layers
    ]


def test_mobiledet_cpu_parameters_and_feature_maps() -> None:
    space = get_space("mobiledets")
    arch = space.reference_archs()["mobiledet_cpu"]
    backbone = space.build_subnet(arch, num_classes=1000)[:-1]
    assert sum(p.numel() for p in backbone.parameters()) == 3_006_440
    blocks = space.lower(arch)
    # 22 layers, three skipped (stage 1 has one layer in the release)
    assert len(blocks) == 1 + 19 + 1 and blocks[0].output_shape == (1, 16, 160, 160)
    # The detection endpoints: C4 (stride 16, end of stage 4) and C5 (stride 32)
    assert blocks[-2].output_shape == (1, 144, 10, 10)
    c4 = [b for b in blocks if b.output_shape == (1, 72, 20, 20)]
    assert len(c4) == 8  # stages 3 and 4; the first of stage 3 is the stride-2 one
    assert [b.params["residual"] for b in c4] == [False, True, True, True] * 2
    assert all(b.params["se"] and b.params["activation"] == "swish6" for b in blocks[1:-1])


# --------------------------------------------------------------------------- variants
def _onnx_op_types(module: nn.Module, shape: tuple[int, ...], path: Path) -> set[str]:
    export_onnx(module, shape, path)
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_cpu_and_accelerator_variants_differ_as_specified(small_spaces, tmp_path) -> None:
    cpu, accelerator = get_space("mobiledets"), get_space("mobiledets_accelerator")
    blocks_of = {
        name: {parse_op(t).block for choices in s.dimension("ops").choices for t in choices}
        for name, s in (("cpu", cpu), ("accelerator", accelerator))
    }
    assert blocks_of == {"cpu": {"ibn", "skip"}, "accelerator": {"ibn", "fused", "tucker", "skip"}}
    assert cpu.dimension("widths") == accelerator.dimension("widths")
    rng = np.random.default_rng(0)
    for variant, space in small_spaces.items():
        arch = space.validate({**dict(space.sample(rng)), "resolution": 32})
        subnet = space.build_subnet(arch, num_classes=10)
        se_layers = [m for m in subnet.modules() if isinstance(m, SqueezeExcite)]
        op_types = _onnx_op_types(subnet, space.input_shape(arch), tmp_path / f"{variant}.onnx")
        layers = [b for b in space.lower(arch) if b.kind != "mobiledets.head"]
        activations = {b.params["activation"] for b in layers}
        if variant == "cpu":
            assert activations == {"swish6"} and se_layers
            assert {"HardSwish", "Sigmoid"} <= op_types and "Clip" not in op_types
        else:
            assert activations == {"relu6"} and not se_layers
            assert "Clip" in op_types and not {"HardSwish", "Sigmoid"} & op_types


# --------------------------------------------------------------------------- space structure
def test_size_counts_every_combination() -> None:
    widths = 4 * 4 * 5 * 6 * 7 * 7 * 7 * 7  # stem and stages 0..6
    assert get_space("mobiledets").size() == 10 * widths * 2 * 4**6 * 5**15
    # accelerator: stage 0 = 2 IBN + 4 Tucker; other first layers 12 ops; 15 skippable 13 ops
    assert get_space("mobiledets_accelerator").size() == 10 * widths * 6 * 12**6 * 13**15


def test_skip_only_on_later_layers_of_a_stage() -> None:
    space = get_space("mobiledets")
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(200)]
    skipped = {i for a in archs for i, t in enumerate(a["ops"]) if t == "skip"}
    assert skipped == set(range(22)) - set(FIRST_LAYERS)
    arch = space.reference_archs()["mobiledet_cpu"]
    for position in FIRST_LAYERS:
        ops = list(arch["ops"])
        ops[position] = "skip"
        with pytest.raises(ArchitectureError, match=rf"ops\[{position}\]=skip.*cannot be skipped"):
            space.validate({**dict(arch), "ops": ops})
    ops = list(arch["ops"])
    ops[6:9] = ["skip"] * 3  # stage 2 down to its first layer
    shorter = space.validate({**dict(arch), "ops": ops})
    assert len(space.lower(shorter)) == len(space.lower(arch)) - 3


def test_bad_architectures_are_rejected_with_the_reason() -> None:
    space = get_space("mobiledets_accelerator")
    arch = space.reference_archs()["mobiledet_dsp"].to_dict()
    cases = [
        ({"ops": arch["ops"][:-1]}, "ops must be a list of 22 values"),
        ({"ops": ["ibn7e4", *arch["ops"][1:]]}, r"ops\[0\]='ibn7e4' is not allowed"),
        ({"ops": [*arch["ops"][:3], "fused3e6", *arch["ops"][4:]]}, r"ops\[3\]='fused3e6'"),
        ({"widths": [33, *arch["widths"][1:]]}, r"widths\[0\]=33 is not allowed"),
        ({"resolution": 300}, "resolution=300 is not allowed"),
    ]
    for change, message in cases:
        with pytest.raises(ArchitectureError, match=message):
            space.validate({**arch, **change})
    with pytest.raises(ArchitectureError, match="cannot read"):
        space.parse("r32_x1")
    with pytest.raises(ArchitectureError, match="not a layer operation"):
        parse_op("conv3")
    with pytest.raises(ValueError, match="unknown variant 'gpu'"):
        MobileDetConfig(variant="gpu")
    with pytest.raises(ValueError, match="residual needs stride 1"):
        InvertedBottleneck(16, 24, 3, 4, residual=True)


def test_cli_rejects_a_bad_architecture_with_exit_code_2(tmp_path) -> None:
    nasvit = shutil.which("nasvit", path=str(Path(sys.executable).parent))
    assert nasvit
    arch = get_space("mobiledets").smallest().to_dict()
    arch["ops"][1] = "skip"  # the stride-2 first layer of stage 1
    bad = json.dumps(arch)
    result = subprocess.run(
        [nasvit, "export", "--space", "mobiledets", "--arch", bad, "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "cannot be skipped" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- default recipe
@pytest.mark.parametrize(("name", "most"), [("mobiledets", 300), ("mobiledets_accelerator", 450)])
def test_default_recipe_keeps_the_latency_table_small(name: str, most: int) -> None:
    space = get_space(name).restrict(**recipe_for(name).restrictions)
    blocks = space.enumerate_blocks(num_classes=10, in_channels=1)
    assert 100 < len(blocks) <= most
    assert {b.input_shape[-1] for b in blocks if b.kind == "mobiledets.stem"} == {32}
    if name == "mobiledets":  # MobileDet-CPU's widths and blocks, at digits' resolution
        released = get_space(name).reference_archs()["mobiledet_cpu"]
        assert space.contains({**dict(released), "resolution": 32})
    else:  # one block type on each stage's first layer, all types on the others
        ops = space.dimension("ops").choices
        types = [{parse_op(t).block for t in ops[i]} for i in FIRST_LAYERS[1:]]
        assert types == [{"fused"}] * 2 + [{"ibn"}] * 4
        assert {parse_op(t).block for t in ops[2]} == {"skip", "ibn", "fused", "tucker"}


def test_residual_branches_start_small() -> None:
    supernet = MobileDetSpace(MobileDetConfig(variant="accelerator", **SMALL)).build_supernet()
    closing = {
        (index, kind): (block.expand if kind == "tucker" else block.project).bn.weight
        for index, blocks in enumerate(supernet.layers)
        for kind, block in blocks.items()
    }
    for (index, _), weight in closing.items():
        expected = 1.0 if index in FIRST_LAYERS else 0.1
        assert torch.all(weight == expected)

"""Import/export round trips, rejected imports, whole-network validation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from nasvit.errors import NasvitError
from nasvit.latency_db import LatencyStore, LatencyTable, MeasurementProtocol
from nasvit.latency_db.transfer import TableImportError, export_table, import_table


@pytest.fixture(scope="module")
def built(tmp_path_factory, quick_profiler, space):
    """One validated table for the module (validation measures real networks: not cheap)."""
    from nasvit.evaluation.latency import resolve_device, validate_table

    store = LatencyStore.open(f"sqlite:///{tmp_path_factory.mktemp('built') / 'n.db'}")
    device, _ = resolve_device(store)
    record = validate_table(
        space, store, quick_profiler, device, n=4, seed=1, resolutions=[32],
        network_protocol=MeasurementProtocol.quick(),
    )  # fmt: skip
    return store, device, record


def test_validation_measures_networks_and_stores_the_run(built, space) -> None:
    store, device, record = built
    assert record.raw.n == 4 and record.n_fit == 2 and record.calibrated_test is not None
    assert 0 <= record.raw.within_10 <= record.raw.within_10 <= 1
    for network in record.details["networks"]:
        ratio = network["predicted_ms"] / network["measured_ms"]
        assert 0.1 < ratio < 10  # a loose sanity factor; accuracy is the bench's job
    assert store.latest_validation(device.id) == record
    table = LatencyTable.load(store, device.name)
    arch = space.parse(record.details["networks"][0]["arch"])
    prediction = table.predict(space.lower(arch))
    assert prediction.expected_error is not None and prediction.latency_ms > 0
    # The error attached to a prediction is the held-out error of the path it took.
    assert prediction.expected_error == record.prediction_error
    assert record.prediction_path in ("cache model", "linear calibration", "raw sum")
    assert prediction.cache_aware is (record.prediction_path == "cache model")
    assert prediction.calibrated is (record.prediction_path == "linear calibration")


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_export_import_round_trip(built, tmp_path: Path, suffix: str) -> None:
    store, device, _ = built
    path = tmp_path / f"table{suffix}"
    count = export_table(store, device.name, path)
    assert count == store.entry_count(device.id) > 0
    other = LatencyStore.open(f"sqlite:///{tmp_path / 'other.db'}")
    result = import_table(other, path, device_name="phone")
    assert (result.device, result.inserted, result.skipped) == ("phone", count, 0)
    imported = LatencyTable.load(other, "phone")
    original = LatencyTable.load(store, device.id)
    assert {k: e.median_ms for k, e in imported.entries.items()} == pytest.approx(
        {k: e.median_ms for k, e in original.entries.items()}
    )
    assert imported.overhead_ms == pytest.approx(original.overhead_ms)
    assert import_table(other, path).inserted == 0  # same device again: nothing new


def _corrupt(frame: pd.DataFrame, how: str) -> pd.DataFrame:
    frame = frame.copy()
    if how == "missing-column":
        return frame.drop(columns=["iqr_ms"])
    if how == "nan":
        frame.loc[1, "median_ms"] = float("nan")
    elif how == "negative":
        frame.loc[0, "median_ms"] = -1.0
    elif how == "schema":
        frame.loc[0, "key"] = frame.loc[0, "key"].replace("nasvit-block/1", "nasvit-block/0")
    elif how == "duplicate":
        frame.loc[1, "key"] = frame.loc[0, "key"]
    return frame


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing-column", "missing column"),
        ("nan", "missing or negative median_ms"),
        ("negative", "negative median_ms"),
        ("schema", "key schema 'nasvit-block/0'"),
        ("duplicate", "duplicate key"),
    ],
)
def test_corrupt_imports_are_rejected_and_write_nothing(
    built,
    tmp_path: Path,
    how: str,
    message: str,
) -> None:
    store, device, _ = built
    good = tmp_path / "good.csv"
    export_table(store, device.name, good)
    bad = tmp_path / "bad.csv"
    _corrupt(pd.read_csv(good), how).to_csv(bad, index=False)
    target = LatencyStore.open(f"sqlite:///{tmp_path / 'target.db'}")
    with pytest.raises(TableImportError, match=message):
        import_table(target, bad, device_name="elsewhere")
    assert target.devices() == []
    json_bad = tmp_path / "bad.json"
    json_bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(TableImportError, match="not a nasvit-latency-table"):
        import_table(target, json_bad)


def test_import_errors_name_the_argument_and_the_cli_words_it_as_a_flag(
    built, tmp_path: Path
) -> None:
    from nasvit.cli.messages import cli_message

    store, device, _ = built
    path = tmp_path / "table.json"
    export_table(store, device.name, path)
    document = json.loads(path.read_text())
    del document["device"]["name"]
    path.write_text(json.dumps(document))
    target = LatencyStore.open(f"sqlite:///{tmp_path / 'target.db'}")
    with pytest.raises(TableImportError, match="no device name") as raised:
        import_table(target, path)
    assert "--" not in str(raised.value) and raised.value.argument == "device_name"
    assert cli_message(raised.value).endswith("name the device with --device-name")
    assert target.devices() == []


def _cli() -> typer.Typer:
    from nasvit.cli.latency import latency_app, profile_command

    app = typer.Typer()
    app.add_typer(latency_app, name="latency")
    app.command("profile")(profile_command)
    return app


def test_cli_profile_show_export_and_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    space,
) -> None:
    from nasvit.search_spaces.efficientformer import EfficientFormerSpace

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    original = EfficientFormerSpace.enumerate_blocks
    monkeypatch.setattr(
        EfficientFormerSpace,
        "enumerate_blocks",
        lambda self, *a, **k: original(self, *a, **k)[:5],  # keep the test fast
    )
    runner = CliRunner()
    result = runner.invoke(
        _cli(), ["profile", "--space", "efficientformer", "--resolutions", "32",
                 "--database-url", url],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = runner.invoke(_cli(), ["latency", "show", "--json", "--database-url", url])
    devices = json.loads(shown.stdout)["devices"]
    assert devices[0]["name"] == "local-cpu-ort-1t" and devices[0]["entries"] == 5
    out = tmp_path / "t.json"
    exported = runner.invoke(
        _cli(), ["latency", "export", "--device", "local-cpu-ort-1t", "--out", str(out),
                 "--database-url", url],
    )  # fmt: skip
    assert exported.exit_code == 0 and len(json.loads(out.read_text())["entries"]) == 5
    for args in (
        ["profile", "--space", "efficientformer", "--resolutions", "3x", "--database-url", url],
        ["latency", "export", "--device", "nope", "--out", str(out), "--database-url", url],
        ["latency", "import", str(tmp_path / "missing.csv"), "--database-url", url],
    ):
        failed = runner.invoke(_cli(), args)
        assert isinstance(failed.exception, NasvitError), args


def test_show_reports_the_error_predictions_carry(built) -> None:
    store, _, record = built
    url = store.engine.url.render_as_string(hide_password=False)
    shown = CliRunner().invoke(
        _cli(), ["latency", "show", "--database-url", url], env={"COLUMNS": "250"}
    )
    assert shown.exit_code == 0, shown.output
    error = record.prediction_error  # not the raw sum's, unless that is the path taken
    expected = f"{record.space}: {record.prediction_path}, MAPE {error.mape:.1f}%"
    assert expected in shown.output


def test_a_restricted_space_uses_its_own_validation(built, space, tmp_path: Path) -> None:
    """The cache model is fitted on one space's network sizes: a table loaded for a restricted
    space takes that space's validation, not the family's (both recorded on one device)."""
    import dataclasses

    from nasvit.evaluation.latency import resolve_device

    _, _, family = built
    narrow = space.restrict(resolution=[64])
    store = LatencyStore.open(f"sqlite:///{tmp_path / 'scoped.db'}")
    device, _ = resolve_device(store)
    store.add_validation(device.id, family)
    store.add_validation(device.id, dataclasses.replace(family, space=narrow.identity))
    store.add_validation(device.id, dataclasses.replace(family, space="lighthubert"))
    assert LatencyTable.load(store, device.id, narrow.identity).validation.space == narrow.identity
    assert LatencyTable.load(store, device.id, space.identity).validation.space == space.name
    # Never validated: the device's newest validation, whatever its space.
    other = space.restrict(resolution=[32]).identity
    assert LatencyTable.load(store, device.id, other).validation.space == "lighthubert"


@pytest.mark.parametrize("repeat", [0, 2])
def test_validation_measures_networks_in_shuffled_order(space, tmp_path: Path, repeat: int) -> None:
    """A drift of the machine over the run must not line up with the fit / held-out split:
    networks are measured in a seeded random order and reported in sample order. With
    ``repeat``, that many networks are measured a second time, shuffled in among the others,
    and the run stores the noise ceiling of the pairs (also through the CLI)."""
    from torch import nn

    from nasvit.evaluation.latency import resolve_device, sample_archs, validate_table
    from nasvit.latency_db import noise_ceiling
    from nasvit.latency_db.profilers import OnnxRuntimeProfiler

    def module_weight_bytes(module: nn.Module) -> int:  # tells the networks apart
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())

    class Recording(OnnxRuntimeProfiler):
        measured: list[tuple[int, float]] = []  # shared by with_protocol's copies

        def measure(self, model, input_shape=None):
            result = super().measure(model, input_shape)
            weights = module_weight_bytes(model) if isinstance(model, nn.Module) else 0
            if weights:  # a whole network, not a block or the empty overhead model
                self.measured.append((weights, result.median_ms))
            return result

    store = LatencyStore.open(f"sqlite:///{tmp_path / 'order.db'}")
    device, _ = resolve_device(store)
    profiler = Recording(threads=1, protocol=MeasurementProtocol.quick())
    archs = sample_archs(space, 5, 3, [32])
    record = validate_table(
        space, store, profiler, device, n=5, seed=3, resolutions=[32],
        network_protocol=MeasurementProtocol.quick(), repeat=repeat,
    )  # fmt: skip
    in_sample_order = [module_weight_bytes(space.build_subnet(a)) for a in archs]
    measured_weights = [w for w, _ in Recording.measured]
    assert len(set(in_sample_order)) == 5  # distinct, so the order can be read off
    scheduled = in_sample_order + in_sample_order[:repeat]
    assert sorted(measured_weights) == sorted(scheduled)
    assert measured_weights != scheduled
    readings = {w: [ms for v, ms in Recording.measured if v == w] for w in in_sample_order}
    networks = record.details["networks"]
    reported = [n["measured_ms"] for n in networks]
    assert reported == [readings[w][0] for w in in_sample_order]  # the first reading counts
    assert [n["arch"] for n in networks] == [space.short_string(a) for a in archs]
    if not repeat:
        assert record.noise_ceiling is None and "remeasured_ms" not in networks[0]
        return
    again = [readings[w][1] for w in in_sample_order[:repeat]]
    assert [n.get("remeasured_ms") for n in networks] == again + [None] * (5 - repeat)
    assert record.noise_ceiling == noise_ceiling(reported[:repeat], again)
    assert store.latest_validation(device.id).noise_ceiling == record.noise_ceiling
    second_readings = [
        i for i, (w, _) in enumerate(Recording.measured) if i > measured_weights.index(w)
    ]
    assert second_readings != [5, 6]  # interleaved, not appended after the others

    url = store.engine.url.render_as_string(hide_password=False)
    args = ["latency", "validate", "--space", "efficientformer", "--n", "5", "--seed", "3",
            "--resolutions", "32", "--repeat", "2", "--database-url", url]  # fmt: skip
    shown = CliRunner().invoke(_cli(), args, env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "noise ceiling (2 networks measured twice): a perfect predictor would score" in (
        shown.output
    )
    cli_record = store.latest_validation(device.id)
    assert cli_record.id != record.id and cli_record.noise_ceiling.n == 2
    negative = CliRunner().invoke(_cli(), [*args[:-4], "--repeat", "-1", *args[-2:]])
    assert negative.exit_code == 2  # a negative count is a usage error

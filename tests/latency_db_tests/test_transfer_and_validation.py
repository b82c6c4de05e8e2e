"""Import/export round trips, rejected imports, whole-network validation and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from nasvit.errors import NasvitError
from nasvit.latency_db import LatencyStore, LatencyTable, MeasurementProtocol
from nasvit.latency_db.transfer import TableImportError, export_table, import_table

from nasvit_testing.toy_spaces import small_efficientformer


def validated_space():
    """A slice of efficientformer at resolution 32 with a few dozen blocks: validation measures
    the blocks of its candidate networks first, and then whole networks."""

    return small_efficientformer()


@pytest.fixture(scope="module")
def built(tmp_path_factory, quick_profiler):
    """One validated table for the module (validation measures real networks: not cheap)."""
    from nasvit.evaluation.latency import resolve_device, validate_table

    store = LatencyStore.open(f"sqlite:///{tmp_path_factory.mktemp('built') / 'n.db'}")
    device, _ = resolve_device(store)
    record = validate_table(
        validated_space(), store, quick_profiler, device, n=6, seed=1, readings=2,
        network_protocol=MeasurementProtocol.quick(),
    )  # fmt: skip
    return store, device, record


def test_validation_measures_networks_and_stores_the_run(built) -> None:
    store, device, record = built
    space = validated_space()
    networks = record.details["networks"]
    assert record.raw.n == len(networks) == 6 and record.space == space.identity
    assert record.n_fit == sum(n["role"] == "fit" for n in networks) >= 3
    judged = record.error_model.sum_judged  # the sum model on the judged networks
    assert (record.raw_test.n, record.raw_test.mape) == (judged.n, pytest.approx(judged.mape))
    assert record.slope is None and record.calibrated_test is None  # no linear calibration
    for network in networks:
        ratio = network["predicted_ms"] / network["truth_ms"]
        assert 0.1 < ratio < 10  # a loose sanity factor; accuracy is the bench's job
    assert store.latest_validation(device.id) == record
    table = LatencyTable.load(store, device.name, space.identity)
    arch = space.parse(networks[0]["arch"])
    prediction = table.predict(space.lower(arch))
    assert prediction.latency_ms > 0 and prediction.validated
    # The error attached to a prediction is the judged error of its band's model.
    band = record.error_model.bands[prediction.band]
    assert prediction.expected_error == band.judged and prediction.model == band.model
    assert prediction.low_ms < prediction.high_ms and prediction.confidence == 0.9
    assert record.prediction_error == record.error_model.judged


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
    assert devices[0]["validated"] is False and devices[0]["latest_validation"] is None
    plain = runner.invoke(
        _cli(), ["latency", "show", "--database-url", url], env={"COLUMNS": "250"}
    )
    assert "never validated" in plain.output and "MAPE" not in plain.output
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


def test_show_reports_the_error_per_band_or_never_validated(built, tmp_path: Path) -> None:
    store, device, record = built
    url = store.engine.url.render_as_string(hide_password=False)
    shown = CliRunner().invoke(
        _cli(), ["latency", "show", "--database-url", url], env={"COLUMNS": "250"}
    )
    assert shown.exit_code == 0, shown.output
    judged = record.prediction_error
    assert f"{record.space}: judged MAPE {judged.mape:.1f}%" in shown.output
    assert "judged error per band" in shown.output and "90% interval width" in shown.output
    for band in record.error_model.describe_bands():
        line = next(ln for ln in shown.output.splitlines() if ln.strip().startswith(
            f"│ {band['band'] + 1} "))  # fmt: skip
        assert band["model"] in line and f"{100 * band['interval_width']:.1f}%" in line
    as_json = CliRunner().invoke(_cli(), ["latency", "show", "--json", "--database-url", url])
    (row,) = json.loads(as_json.stdout)["devices"]
    assert row["validated"] and len(row["latest_validation"]["bands"]) == 4

    # A run stored before intervals existed has no error model: no figure is shown for it.
    old = dataclasses.replace(record, details={"networks": []})
    other = LatencyStore.open(f"sqlite:///{tmp_path / 'old.db'}")
    other.add_validation(other.ensure_device(device.fingerprint, name="old").id, old)
    url = other.engine.url.render_as_string(hide_password=False)
    shown = CliRunner().invoke(
        _cli(), ["latency", "show", "--database-url", url], env={"COLUMNS": "250"}
    )
    assert "never validated" in shown.output and "MAPE" not in shown.output


def test_a_restricted_space_uses_its_own_validation(built, space, tmp_path: Path) -> None:
    """The error model is fitted on one space's network sizes: a table loaded for a restricted
    space takes that space's validation, not the family's (both recorded on one device)."""
    from nasvit.evaluation.latency import resolve_device

    _, _, family = built
    narrow = space.restrict(resolution=[64])
    store = LatencyStore.open(f"sqlite:///{tmp_path / 'scoped.db'}")
    device, _ = resolve_device(store)
    store.add_validation(device.id, dataclasses.replace(family, space=space.identity))
    store.add_validation(device.id, dataclasses.replace(family, space=narrow.identity))
    store.add_validation(device.id, dataclasses.replace(family, space="lighthubert"))
    assert LatencyTable.load(store, device.id, narrow.identity).validation.space == narrow.identity
    assert LatencyTable.load(store, device.id, space.identity).validation.space == space.name
    # Never validated: the device's newest validation, whatever its space.
    other = space.restrict(resolution=[32]).identity
    assert LatencyTable.load(store, device.id, other).validation.space == "lighthubert"


def test_cli_validate_prints_the_error_per_band_and_the_noise_ceiling(
    tmp_path: Path, quick_profiler
) -> None:
    """``nasvit latency validate`` on the tiny registered space (its blocks measured first, so
    the command only reads networks): per-band figures, fit and judged counts, the judged
    error overall and the truth's noise ceiling; a reading count below 1 is a usage error."""
    from nasvit.evaluation.latency import build_space_table, resolve_device
    from nasvit.search_spaces import get_space, registry
    from nasvit.search_spaces.efficientformer import EfficientFormerSpace

    from nasvit_testing.tiny_space import TINY, TINY_CONFIG

    store = LatencyStore.open(f"sqlite:///{tmp_path / 'cli.db'}")
    url = store.engine.url.render_as_string(hide_password=False)
    args = ["latency", "validate", "--space", TINY, "--n", "6", "--readings", "2",
            "--resolutions", "16", "--database-url", url]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._FACTORIES, TINY, lambda: EfficientFormerSpace(TINY_CONFIG))
        device, _ = resolve_device(store)
        build_space_table(get_space(TINY), store, quick_profiler, device, [16])
        shown = CliRunner().invoke(_cli(), args, env={"COLUMNS": "250"})
        assert shown.exit_code == 0, shown.output
        record = store.latest_validation(device.id)
        as_json = CliRunner().invoke(_cli(), [*args, "--json"])
        for bad in ("0", "-1"):
            wide = {"COLUMNS": "250"}
            refused = CliRunner().invoke(_cli(), [*args[:7], bad, *args[8:]], env=wide)
            assert refused.exit_code == 2 and "--readings" in refused.output, refused.output
            assert "greater than or equal to 1" in refused.output
    output = shown.output
    networks = record.details["networks"]
    judged = sum(n["role"] == "judged" for n in networks)
    stratified = sum(n["role"] == "judged" and n["origin"] == "stratified" for n in networks)
    assert stratified and record.n_fit == 6 - judged >= 3
    assert (
        f"6 networks, 2 fresh-session reading(s) each, interleaved; fitted on {record.n_fit}, "
        f"judged on {judged} (1 smallest, 1 largest, {stratified} stratified)" in output
    )
    assert "judged networks per latency band" in output and "median bias" in output
    assert f"judged overall ({judged} networks): MAPE {record.prediction_error.mape:.2f}%" in output
    ceiling = record.noise_ceiling
    assert (
        "noise ceiling of that truth (median of 2 readings): a perfect predictor would score "
        f"{100 * ceiling.within_10:.1f}% within ±10%"
    ) in output
    summary = json.loads(as_json.stdout)
    assert summary["device"] == device.name and len(summary["bands"]) == 4
    assert summary["noise_ceiling"]["n"] == 6
    assert [len(n["readings_ms"]) for n in summary["details"]["networks"]] == [2] * 6
    assert summary["details"]["error_model"]["n_fit"] == record.n_fit

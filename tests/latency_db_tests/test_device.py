"""Device fingerprints are stable, readable and include every setting that changes latency."""

from __future__ import annotations

from dataclasses import replace

from nasvit.latency_db import DeviceFingerprint, OnnxRuntimeProfiler, TorchProfiler


def test_local_fingerprint_is_stable_and_named() -> None:
    settings = OnnxRuntimeProfiler().settings
    first = DeviceFingerprint.local(settings)
    assert first == DeviceFingerprint.local(settings)
    assert first.device_id == DeviceFingerprint.local(settings).device_id
    assert len(first.device_id) == 16
    assert first.default_name() == "local-cpu-ort-1t"
    assert first.cpu_model and first.cores >= 1 and first.runtime_version
    assert DeviceFingerprint.from_dict(first.to_dict()) == first
    assert DeviceFingerprint.local(TorchProfiler(threads=2).settings).default_name() == (
        "local-cpu-torch-2t"
    )


def test_every_setting_changes_the_id() -> None:
    base = DeviceFingerprint.local(OnnxRuntimeProfiler().settings)
    variants = [
        replace(base, threads=2),
        replace(base, optimization="basic"),
        replace(base, batch=8),
        replace(base, precision="fp16"),
        replace(base, runtime_version="0.0"),
        replace(base, cpu_model="other"),
    ]
    assert len({v.device_id for v in [base, *variants]}) == len(variants) + 1
    assert replace(base, optimization="basic", batch=8).default_name() == (
        "local-cpu-ort-1t-optbasic-b8"
    )
    assert base.same_host(replace(base, threads=2)) and not base.same_host(variants[-1])

"""Nothing on the unit's run-time path imports scipy (it would cost the unit ~70 MB of resident memory).

A fresh interpreter imports the unit pipeline and the dsp_ext streams, builds every stream the unit builds
(EDA, PPG, HRV, synchrony, the device extractors) and pushes data through them; scipy must not be in
``sys.modules`` afterwards.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import device.pipeline, device.features, device.unit
    import dsp_ext.eda, dsp_ext.ppg, dsp_ext.hrv, dsp_ext.grid, dsp_ext.filters, dsp_ext.synchrony
    from dsp_ext.filters import SosFilter, butter_sos, sosfilt
    from dsp_ext.synchrony import StreamingWcc, SyncParams

    rng = np.random.default_rng(0)
    eda = [dsp_ext.eda.EdaStream(32.0) for _ in range(2)]
    ppg = [dsp_ext.ppg.PpgStream(100.0) for _ in range(2)]
    hrv = [dsp_ext.hrv.HrvStream() for _ in range(2)]
    wcc = StreamingWcc(SyncParams())
    t = np.arange(100 * 90) / 100.0
    counts = 2e4 + 500 * np.maximum(np.sin(2 * np.pi * 1.2 * t), 0) ** 3 + rng.standard_normal(len(t))
    n_epochs = 0
    for s in range(90):
        fe = [e.push(5 + 0.01 * rng.standard_normal(32)) for e in eda]
        fp = [p.push(counts[s * 100 : (s + 1) * 100]) for p in ppg]
        n_epochs += sum(len(h.push_features(f)) for h, f in zip(hrv, fp))
        wcc.push(fe[0].eda_us, fe[1].eda_us)
    assert n_epochs >= 2, n_epochs
    sosfilt(butter_sos(3, 5.0, 100.0, "high"), np.ones(10), init="first")
    SosFilter(butter_sos(2, (1.0, 2.0), 10.0, "bandpass"), init="first").process(np.ones(5))
    for name in ("eda", "ppg"):
        ex = device.features.make_extractor(name, 32.0 if name == "eda" else 100.0)
    loaded = sorted(m for m in sys.modules if m == "scipy" or m.startswith("scipy."))
    print("SCIPY:" + ",".join(loaded))
    """
)


def test_unit_runtime_path_does_not_import_scipy():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("SCIPY:")]
    assert line == ["SCIPY:"], res.stdout


def test_the_check_can_fail():
    """The same check sees scipy when something does import it (so the test above is not vacuous)."""
    script = SCRIPT.replace("import sys\n", "import sys\nimport scipy.signal\n", 1)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "scipy.signal" in res.stdout

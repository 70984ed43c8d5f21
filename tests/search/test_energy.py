from autolite.eval.energy import EnergyMeter, summarize


def test_modelled_energy_is_labelled(tmp_path):
    meter = EnergyMeter(root=tmp_path)  # no RAPL zone here
    meter.start()
    sum(i * i for i in range(200_000))
    joules = meter.stop()
    assert meter.source == "modelled" and "modelled, not measured" in meter.note and joules > 0


def test_rapl_counter_is_read_and_wraps(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("999000000")
    (zone / "max_energy_range_uj").write_text("1000000000")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-zone is not counted twice
    meter = EnergyMeter(root=tmp_path)
    assert meter.source == "rapl"
    meter.start()
    (zone / "energy_uj").write_text("2000000")  # wrapped: 1 J + 2 J
    assert abs(meter.stop() - 3.0) < 1e-9


def test_summary_per_inference():
    summary = summarize([2.0, 4.0, 3.0], 4, "rapl", "measured")
    assert summary["joules_per_call"] == 3.0 and summary["joules_per_inference"] == 0.75

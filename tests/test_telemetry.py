"""jetson_agent.telemetry against recorded real output.

The tegrastats lines under fixtures/tegrastats/ are verbatim copies of real device output (see
its README for where each came from); every expected number below is read off those lines by
eye, not produced by the parser. The sysfs trees under fixtures/sysfs/ follow the documented
layouts with hand-checkable values.
"""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest

from jetson_agent import telemetry
from jetson_agent.telemetry import (
    Ina3221,
    PowerMonitor,
    clocks_dropped,
    device_name,
    energy_report,
    is_jetson,
    parse_nvpmodel,
    parse_tegrastats_line,
    read_ina3221,
    snapshot,
)

FIXTURES = Path(__file__).parent / "fixtures"
TEGRASTATS = FIXTURES / "tegrastats"
SYSFS = FIXTURES / "sysfs"
NANO = str(SYSFS / "nano_jp46")
ORIN = str(SYSFS / "orin_jp6")
AGX_ORIN = str(SYSFS / "agx_orin_jp6")

# `nvpmodel -q` on a Jetson Nano (JetPack 4.6), as given in the task brief.
NVPMODEL_NANO = "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n"


def lines(name: str) -> list[str]:
    return [line for line in (TEGRASTATS / name).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- tegrastats


def test_nano_jp461_line_parses_to_its_numbers():
    stats = parse_tegrastats_line(lines("nano_jp461.txt")[0])
    assert stats["timestamp"] is None
    assert (stats["ram_used_mb"], stats["ram_total_mb"]) == (1923, 3964)
    assert (stats["swap_used_mb"], stats["swap_total_mb"]) == (191, 1982)
    assert stats["cpu_loads_pct"] == [5, 4, 3, 6]
    assert stats["cpu_freqs_mhz"] == [1224, 1224, 1224, 1224]
    assert (stats["emc_pct"], stats["emc_freq_mhz"]) == (0, 1600)
    assert (stats["gr3d_pct"], stats["gr3d_freq_mhz"]) == (0, 76)
    assert stats["temperatures_c"] == {
        "PLL": 37.0,
        "CPU": 40.0,
        "PMIC": 50.0,
        "GPU": 40.0,
        "AO": 45.0,
        "thermal": 40.0,
    }
    assert stats["rails_mw"] == {
        "POM_5V_IN": {"current": 1750, "average": 1628},
        "POM_5V_GPU": {"current": 0, "average": 0},
        "POM_5V_CPU": {"current": 366, "average": 406},
    }
    assert stats["total_power_mw"] == 1750
    assert stats["total_power_rail"] == "POM_5V_IN"


def test_nano_line_with_engine_tokens_parses():
    stats = parse_tegrastats_line(lines("nano_jp4_jetson_stats.txt")[0])
    assert (stats["ram_used_mb"], stats["ram_total_mb"]) == (1180, 3965)
    assert stats["cpu_loads_pct"] == [30, 33, 28, 26]
    assert stats["cpu_freqs_mhz"] == [1036] * 4
    assert (stats["emc_pct"], stats["emc_freq_mhz"]) == (10, 1600)
    assert stats["temperatures_c"]["CPU"] == 60.5
    assert stats["temperatures_c"]["thermal"] == 59.75
    assert stats["rails_mw"]["POM_5V_CPU"] == {"current": 1078, "average": 1205}
    assert stats["total_power_mw"] == 4520  # "NVENC 716 NVDEC 716" are ignored


def test_xavier_nx_jp441_rails_without_units():
    stats = parse_tegrastats_line(lines("xavier_nx_jp441.txt")[0])
    assert stats["cpu_loads_pct"] == [47, 23, 32, 22, 31, 96]
    assert (stats["gr3d_pct"], stats["gr3d_freq_mhz"]) == (0, 1109)
    assert stats["temperatures_c"]["thermal"] == 31.35
    assert stats["rails_mw"] == {
        "VDD_IN": {"current": 6140, "average": 5510},
        "VDD_CPU_GPU_CV": {"current": 2706, "average": 2119},
        "VDD_SOC": {"current": 1074, "average": 1051},
    }
    assert (stats["total_power_mw"], stats["total_power_rail"]) == (6140, "VDD_IN")


def test_xavier_nx_jp512_line_parses_to_its_numbers():
    stats = parse_tegrastats_line(lines("xavier_nx_jp512.txt")[0])
    assert stats["timestamp"] == "07-09-2024 13:31:31"
    assert (stats["ram_used_mb"], stats["ram_total_mb"]) == (3168, 6851)
    assert stats["cpu_freqs_mhz"] == [1397, 1192, 1190, 1190, 1190, 1190]
    assert (stats["emc_pct"], stats["emc_freq_mhz"]) == (2, 204)
    assert (stats["gr3d_pct"], stats["gr3d_freq_mhz"]) == (0, 114)
    assert stats["gr3d_gpc_freqs_mhz"] == [114]
    assert stats["temperatures_c"] == {
        "AUX": 45.0,
        "CPU": 46.5,
        "thermal": 45.6,
        "AO": 45.0,
        "GPU": 45.5,
        "PMIC": 50.0,
    }
    assert stats["rails_mw"]["VDD_IN"] == {"current": 2763, "average": 2846}
    assert stats["rails_mw"]["VDD_SOC"] == {"current": 650, "average": 711}
    assert stats["total_power_mw"] == 2763


def test_agx_orin_line_has_per_gpc_clocks_and_no_input_rail():
    stats = parse_tegrastats_line(lines("agx_orin_dla.txt")[0])
    assert stats["timestamp"] == "11-21-2025 08:49:48"
    assert (stats["ram_used_mb"], stats["ram_total_mb"]) == (13983, 62780)
    assert stats["cpu_loads_pct"] == [90] + [100] * 11
    assert (stats["gr3d_pct"], stats["gr3d_gpc_freqs_mhz"]) == (14, [407, 407])
    assert stats["gr3d_freq_mhz"] == 407
    assert stats["temperatures_c"]["CV0"] == 73.625
    assert stats["temperatures_c"]["tj"] == 77.281
    assert stats["rails_mw"] == {
        "VDD_GPU_SOC": {"current": 3150, "average": 2971},
        "VDD_CPU_CV": {"current": 14312, "average": 12415},
        "VIN_SYS_5V0": {"current": 4968, "average": 5048},
        "VDDQ_VDD2_1V8AO": {"current": 1091, "average": 1091},
    }
    # AGX Orin has no module-input channel; a sum would not be the board's power.
    assert stats["total_power_mw"] is None
    assert stats["total_power_rail"] is None


def test_agx_orin_jp62_lines_parse_to_their_numbers():
    first, second, third = (parse_tegrastats_line(line) for line in lines("agx_orin_jp62.txt"))
    assert first["timestamp"] == "05-09-2026 18:42:06"
    assert first["cpu_freqs_mhz"][:4] == [2188, 2112, 2035, 2201]
    assert (first["gr3d_pct"], first["gr3d_gpc_freqs_mhz"]) == (0, [0, 0])
    assert first["temperatures_c"] == {
        "cpu": 52.562,
        "soc2": 48.437,
        "soc0": 49.093,
        "tj": 52.562,
        "soc1": 49.656,
    }
    assert second["rails_mw"]["VIN_SYS_5V0"] == {"current": 4607, "average": 4657}
    assert third["rails_mw"]["VIN_SYS_5V0"] == {"current": 4707, "average": 4674}
    assert third["emc_pct"] == 2
    assert all(s["total_power_mw"] is None for s in (first, second, third))


def test_orin_nano_jp62_lines_parse_to_their_numbers():
    busy, idle = (parse_tegrastats_line(line) for line in lines("orin_nano_super_jp62.txt"))
    assert busy["timestamp"] == "10-08-2026 04:35:02"
    assert (busy["ram_used_mb"], busy["ram_total_mb"]) == (6712, 7620)
    assert busy["cpu_loads_pct"] == [38, 2, 1, 0, 1, 0]
    assert busy["cpu_freqs_mhz"] == [1497, 729, 729, 729, 729, 729]
    assert (busy["emc_pct"], busy["emc_freq_mhz"]) == (61, 2133)
    assert (busy["gr3d_pct"], busy["gr3d_freq_mhz"]) == (99, 612)
    assert busy["temperatures_c"]["gpu"] == 58.625
    assert busy["rails_mw"] == {
        "VDD_IN": {"current": 16321, "average": 11204},
        "VDD_CPU_GPU_CV": {"current": 7104, "average": 4944},
        "VDD_SOC": {"current": 3120, "average": 3659},
    }
    assert (busy["total_power_mw"], busy["total_power_rail"]) == (16321, "VDD_IN")
    assert (idle["gr3d_pct"], idle["gr3d_freq_mhz"]) == (0, 305)
    assert idle["total_power_mw"] == 5251
    assert idle["rails_mw"]["VDD_IN"]["average"] == 8535


def test_thor_line_without_gpu_load():
    stats = parse_tegrastats_line(lines("thor_r38.txt")[0])
    assert stats["gr3d_pct"] is None  # "GR3D_FREQ @[0,0,0]": clocks only
    assert stats["gr3d_gpc_freqs_mhz"] == [0, 0, 0]
    assert len(stats["cpu_loads_pct"]) == 14
    assert stats["temperatures_c"]["soc345"] == 34.5
    assert stats["rails_mw"]["VDD_CPU_SOC_MSS"] == {"current": 4165, "average": 4165}
    assert stats["total_power_mw"] is None


def test_three_valued_rails_keep_current_and_average():
    stats = parse_tegrastats_line(lines("agx_orin_jp7_three_values.txt")[0])
    assert stats["rails_mw"]["VDD_GPU_SOC"] == {"current": 5139, "average": 5139}
    assert stats["temperatures_c"]["cpu"] == 52.968
    assert (stats["gr3d_pct"], stats["gr3d_freq_mhz"]) == (12, 1300)
    assert stats["swap_used_mb"] is None  # this release prints no SWAP


def test_every_fixture_line_has_the_same_keys():
    keys = set(parse_tegrastats_line("").keys())
    for fixture in sorted(TEGRASTATS.glob("*.txt")):
        for line in lines(fixture.name):
            assert set(parse_tegrastats_line(line)) == keys, fixture.name


def test_off_cores_stay_in_place():
    stats = parse_tegrastats_line("CPU [22%@518,67%@518,off,off] GR3D_FREQ 0%@76")
    assert stats["cpu_loads_pct"] == [22, 67, None, None]
    assert stats["cpu_freqs_mhz"] == [518, 518, None, None]


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "\n",
        None,
        42,
        b"RAM 1923/3964MB (lfb 2x2MB) POM_5V_IN 1750/1628",
        "some other log line",
        "RAM",
        "GR3D_FREQ",
        "GR3D_FREQ %@[",
        "CPU [",
        "CPU [,,,]",
        "VDD_IN abc/def",
        "VDD_IN 12mW/",
        "\x00\xff\ufffd tegrastats",
        "cpu@C gpu@-C tj@.5C",
        # a real line cut off mid-token, as a killed tegrastats leaves it
        lines("orin_nano_super_jp62.txt")[0][:137],
    ],
)
def test_garbage_and_partial_lines_do_not_crash(garbage):
    stats = parse_tegrastats_line(garbage)
    assert set(stats) == set(parse_tegrastats_line(""))


def test_bytes_line_is_decoded():
    stats = parse_tegrastats_line(b"RAM 1923/3964MB (lfb 2x2MB) POM_5V_IN 1750/1628")
    assert stats["ram_used_mb"] == 1923
    assert stats["total_power_mw"] == 1750


def test_truncated_real_line_keeps_what_it_has():
    stats = parse_tegrastats_line(lines("orin_nano_super_jp62.txt")[0][:137])
    assert stats["ram_used_mb"] == 6712
    assert stats["rails_mw"] == {}
    assert stats["total_power_mw"] is None


def test_unknown_tokens_are_ignored():
    line = lines("xavier_nx_jp512.txt")[0].replace("APE 150", "APE 150 NEWENG 3%@[1,2] FOO off")
    stats = parse_tegrastats_line(line)
    assert stats["total_power_mw"] == 2763
    assert stats["gr3d_freq_mhz"] == 114


def test_line_without_power_rails_has_no_total():
    stats = parse_tegrastats_line(
        "RAM 4722/7844MB (lfb 1x512kB) EMC_FREQ 2%@1866 GR3D_FREQ 10%@1300"
    )
    assert stats["rails_mw"] == {}
    assert stats["total_power_mw"] is None
    assert stats["ram_used_mb"] == 4722  # "RAM a/bMB" is never mistaken for a rail


# --------------------------------------------------------------------------- INA3221 sysfs


def test_ina3221x_iio_on_nano_jp46():
    reader = Ina3221(NANO)
    assert reader.driver == "ina3221x"
    reading = reader.read()
    assert reading["rails_mw"] == {"POM_5V_IN": 1750.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 366.0}
    assert reading["total_power_mw"] == 1750.0
    assert reading["total_power_rail"] == "POM_5V_IN"


def test_ina3221_hwmon_on_orin_jp6_multiplies_mv_by_ma():
    reader = Ina3221(ORIN)
    assert reader.driver == "ina3221"
    rails = reader.read_rails()
    # in4..6 (no label) and in7 "sum of shunt voltages" (no curr7_input) are not rails.
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert rails["VDD_IN"] == pytest.approx(5048 * 1040 / 1000)
    assert rails["VDD_CPU_GPU_CV"] == pytest.approx(5048 * 112 / 1000)
    assert rails["VDD_SOC"] == pytest.approx(5048 * 268 / 1000)
    assert read_ina3221(ORIN)["total_power_mw"] == pytest.approx(5249.92)


def test_agx_orin_has_rails_but_no_total():
    reading = read_ina3221(AGX_ORIN)
    assert set(reading["rails_mw"]) == {
        "VDD_GPU_SOC",
        "VDD_CPU_CV",
        "VIN_SYS_5V0",
        "VDDQ_VDD2_1V8AO",
    }  # both NC channels of 1-0041 are skipped
    assert reading["rails_mw"]["VIN_SYS_5V0"] == pytest.approx(4992 * 943 / 1000)
    assert reading["total_power_mw"] is None


def test_ina3221_absent_or_unreadable(tmp_path):
    assert not Ina3221(str(tmp_path)).available()
    assert read_ina3221(str(tmp_path)) == {
        "rails_mw": {},
        "total_power_mw": None,
        "total_power_rail": None,
    }
    folder = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    folder.mkdir(parents=True)
    (folder / "rail_name_0").write_text("POM_5V_IN\n")
    (folder / "in_power0_input").write_text("garbage\n")
    assert read_ina3221(str(tmp_path))["total_power_mw"] is None


# --------------------------------------------------------------------------- PowerMonitor

REPLAY = """\
import sys, time
lines = [l for l in open({fixture!r}) if l.strip()]
interval_ms = 100
if "--interval" in sys.argv:
    interval_ms = int(sys.argv[sys.argv.index("--interval") + 1])
for _ in range({repeat}):
    for line in lines:
        sys.stdout.write(line)
        sys.stdout.flush()
        time.sleep(interval_ms / 1000.0)
while True:  # like tegrastats: keep running until terminated
    time.sleep(0.05)
"""


def fake_tegrastats(tmp_path: Path, fixture: str, repeat: int) -> str:
    """An executable that replays a fixture file line by line like tegrastats would."""
    script = tmp_path / "tegrastats"
    body = REPLAY.format(fixture=str(TEGRASTATS / fixture), repeat=repeat)
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def wait_for(monitor: PowerMonitor, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(monitor.samples()) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def assert_increasing(samples):
    times = [t for t, _ in samples]
    assert all(b > a for a, b in itertools.pairwise(times)), times


def test_tegrastats_subprocess_through_power_monitor(tmp_path):
    script = fake_tegrastats(tmp_path, "orin_nano_super_jp62.txt", repeat=3)
    monitor = PowerMonitor(command=[script, "--interval", "30"])
    before = time.monotonic()
    monitor.start()
    process = monitor._process
    wait_for(monitor, 6)
    samples = monitor.stop()
    after = time.monotonic()
    assert [p for _t, p in samples] == [16321.0, 5251.0] * 3
    assert_increasing(samples)
    assert all(before <= t <= after for t, _p in samples)
    assert monitor.source == "tegrastats"
    assert monitor.input_rail == "VDD_IN"
    assert process.poll() is not None  # stop() terminated the replaying subprocess
    assert not monitor.running


def test_detect_picks_tegrastats_when_on_path(tmp_path):
    script = fake_tegrastats(tmp_path, "nano_jp461.txt", repeat=50)
    monitor = PowerMonitor.detect(root=str(tmp_path), tegrastats=script)
    assert monitor is not None and monitor.source == "tegrastats"
    assert monitor.command == [script, "--interval", "100"]
    assert monitor.idle_power_mw(seconds=0.5) == pytest.approx(1750.0)
    assert monitor.input_rail == "POM_5V_IN"


def test_detect_falls_back_to_sysfs_then_none(tmp_path):
    missing = str(tmp_path / "no-tegrastats-here")
    nano = PowerMonitor.detect(root=NANO, tegrastats=missing)
    assert nano is not None and nano.source == "ina3221"
    orin = PowerMonitor.detect(root=ORIN, tegrastats=missing)
    assert orin is not None and orin.source == "ina3221"
    assert PowerMonitor.detect(root=AGX_ORIN, tegrastats=missing) is None  # no input rail
    assert PowerMonitor.detect(root=str(tmp_path), tegrastats=missing) is None


def test_sysfs_polling_through_power_monitor():
    monitor = PowerMonitor(reader=Ina3221(ORIN), interval_s=0.02)
    monitor.start()
    wait_for(monitor, 5)
    samples = monitor.stop()
    assert len(samples) >= 5
    assert_increasing(samples)
    assert [p for _t, p in samples] == pytest.approx([5249.92] * len(samples))
    assert monitor.input_rail == "VDD_IN"


def test_idle_power_uses_a_running_sampler():
    monitor = PowerMonitor(reader=Ina3221(NANO), interval_s=0.02)
    monitor.start()
    try:
        assert monitor.idle_power_mw(seconds=0.2) == pytest.approx(1750.0)
        assert monitor.running
    finally:
        monitor.stop()


def test_power_monitor_needs_exactly_one_source():
    with pytest.raises(ValueError):
        PowerMonitor()
    with pytest.raises(ValueError):
        PowerMonitor(command=["tegrastats"], reader=Ina3221(NANO))


def test_this_host_has_no_power_monitor_unless_it_is_a_jetson():
    if shutil.which("tegrastats") is None and not is_jetson("/"):
        assert PowerMonitor.detect() is None


# --------------------------------------------------------------------------- energy


def test_energy_report_against_hand_computation():
    samples = [(3.0, 4000.0), (0.0, 1000.0), (2.0, 2000.0), (1.0, 3000.0)]  # unsorted on purpose
    report = energy_report(samples, run_start=0.5, run_end=2.5, idle_mw=1000.0, inferences=100)
    # Edges: P(0.5) = 2000 (between 1000 and 3000), P(2.5) = 3000 (between 2000 and 4000).
    # Trapezoids: 0.5*(2000+3000)/2 + 1*(3000+2000)/2 + 0.5*(2000+3000)/2 = 1250+2500+1250 mJ.
    assert report["samples_in_window"] == 2
    assert report["duration_s"] == pytest.approx(2.0)
    assert report["energy_mj"] == pytest.approx(5000.0)
    assert report["mean_power_mw"] == pytest.approx(2500.0)
    assert report["energy_above_idle_mj"] == pytest.approx(5000.0 - 1000.0 * 2.0)
    assert report["energy_per_inference_mj"] == pytest.approx(30.0)
    assert report["reason"] is None


def test_energy_report_holds_the_nearest_sample_past_the_data():
    report = energy_report([(1.0, 1000.0), (2.0, 3000.0)], 0.5, 2.5, idle_mw=0.0, inferences=4)
    # Curve (0.5,1000) (1,1000) (2,3000) (2.5,3000): 500 + 2000 + 1500 mJ.
    assert report["energy_mj"] == pytest.approx(4000.0)
    assert report["mean_power_mw"] == pytest.approx(2000.0)
    assert report["energy_per_inference_mj"] == pytest.approx(1000.0)


def test_energy_report_with_samples_exactly_on_the_edges():
    report = energy_report([(0.0, 2000.0), (1.0, 4000.0)], 0.0, 1.0, idle_mw=500.0, inferences=10)
    assert report["energy_mj"] == pytest.approx(3000.0)
    assert report["energy_per_inference_mj"] == pytest.approx((3000.0 - 500.0) / 10)


def test_energy_report_needs_two_samples_in_the_window():
    report = energy_report([(0.0, 1000.0), (3.0, 3000.0)], 1.0, 2.0, idle_mw=0.0, inferences=1)
    assert report["samples_in_window"] == 0
    assert report["energy_mj"] is None
    assert report["mean_power_mw"] is None
    assert report["energy_per_inference_mj"] is None
    assert "fewer than 2" in report["reason"]
    one = energy_report([(1.5, 1000.0)], 1.0, 2.0, idle_mw=0.0, inferences=1)
    assert one["energy_mj"] is None and "fewer than 2" in one["reason"]
    assert energy_report([], 1.0, 2.0, idle_mw=None, inferences=1)["energy_mj"] is None


def test_energy_report_without_idle_or_inferences():
    samples = [(0.0, 1000.0), (1.0, 1000.0)]
    no_idle = energy_report(samples, 0.0, 1.0, idle_mw=None, inferences=10)
    assert no_idle["energy_mj"] == pytest.approx(1000.0)
    assert no_idle["energy_per_inference_mj"] is None
    assert "idle" in no_idle["reason"]
    no_count = energy_report(samples, 0.0, 1.0, idle_mw=100.0, inferences=0)
    assert no_count["energy_per_inference_mj"] is None
    assert "inference" in no_count["reason"]
    empty = energy_report(samples, 1.0, 1.0, idle_mw=100.0, inferences=1)
    assert empty["energy_mj"] is None and "empty" in empty["reason"]


def test_energy_report_from_a_replayed_tegrastats_run(tmp_path):
    script = fake_tegrastats(tmp_path, "orin_nano_super_jp62.txt", repeat=3)
    monitor = PowerMonitor(command=[script, "--interval", "30"])
    monitor.start()
    wait_for(monitor, 6)
    samples = monitor.stop()
    start, end = samples[1][0], samples[4][0]
    report = energy_report(samples, start, end, idle_mw=5251.0, inferences=3)
    expected = sum(
        (t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(samples[1:5])
    )
    assert report["samples_in_window"] == 4
    assert report["energy_mj"] == pytest.approx(expected)
    assert 5251.0 <= report["mean_power_mw"] <= 16321.0


# --------------------------------------------------------------------------- snapshot


def test_snapshot_on_nano_fixture():
    calls = []

    def runner(argv):
        calls.append(argv)
        return NVPMODEL_NANO

    snap = snapshot(root=NANO, run=runner)
    assert calls == [["nvpmodel", "-q"]]
    assert snap["power_mode"] == "MAXN"
    assert snap["power_mode_id"] == 0
    assert snap["temperatures_c"] == {
        "AO-therm": 45.0,
        "CPU-therm": 40.0,
        "GPU-therm": 40.0,
        "PLL-therm": 37.0,
        "PMIC-Die": 50.0,
        "thermal-fan-est": 40.0,
    }
    assert snap["clocks_mhz"]["gpu"] == pytest.approx(921.6)
    assert snap["clocks_mhz"]["cpu"] == {f"cpu{n}": 1479.0 for n in range(4)}
    assert snap["clocks_mhz"]["emc"] == pytest.approx(1600.0)
    assert snap["jetson_clocks"] is True  # CPU and GPU pinned at min == max


def test_snapshot_on_orin_fixture():
    snap = snapshot(root=ORIN, run=lambda argv: "NV Power Mode: 15W\n1\n")
    assert (snap["power_mode"], snap["power_mode_id"]) == ("15W", 1)
    assert snap["clocks_mhz"]["gpu"] == pytest.approx(612.0)  # 17000000.gpu, not 15340000.vic
    assert snap["clocks_mhz"]["cpu"]["cpu5"] == pytest.approx(1497.6)
    assert snap["clocks_mhz"]["emc"] == pytest.approx(2133.0)
    assert snap["temperatures_c"]["tj-thermal"] == pytest.approx(49.312)
    assert snap["temperatures_c"]["cv0-thermal"] == -256.0  # Tegra's "sensor off", as read
    assert snap["jetson_clocks"] is False


def test_snapshot_fields_are_empty_where_nothing_is_offered(tmp_path):
    snap = snapshot(root=str(tmp_path), run=lambda argv: None)
    assert snap == {
        "temperatures_c": {},
        "clocks_mhz": {"gpu": None, "cpu": {}, "emc": None},
        "power_mode": None,
        "power_mode_id": None,
        "jetson_clocks": None,
    }


def test_snapshot_on_this_real_host():
    snap = snapshot()
    assert set(snap) == {
        "temperatures_c",
        "clocks_mhz",
        "power_mode",
        "power_mode_id",
        "jetson_clocks",
    }
    assert all(isinstance(k, str) for k in snap["temperatures_c"])
    assert all(isinstance(v, float) for v in snap["temperatures_c"].values())
    clocks = snap["clocks_mhz"]
    assert clocks["gpu"] is None or isinstance(clocks["gpu"], float)
    assert clocks["emc"] is None or isinstance(clocks["emc"], float)
    assert all(isinstance(v, float) and v > 0 for v in clocks["cpu"].values())
    assert snap["jetson_clocks"] is None or isinstance(snap["jetson_clocks"], bool)
    if shutil.which("nvpmodel") is None:
        assert snap["power_mode"] is None
        assert snap["power_mode_id"] is None
    if not is_jetson("/"):
        assert snap["jetson_clocks"] is None


def test_run_command_runs_and_reports_absence():
    assert telemetry.run_command(["definitely-not-a-binary-vitopt"]) is None
    output = telemetry.run_command(
        [
            sys.executable,
            "-c",
            "import sys; print('NVPM WARN: x', file=sys.stderr); "
            "print('NV Power Mode: MAXN'); print(0)",
        ]
    )
    assert parse_nvpmodel(output) == ("MAXN", 0)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (NVPMODEL_NANO, ("MAXN", 0)),
        ("NV Power Mode: MAXN_SUPER\n2\n", ("MAXN_SUPER", 2)),
        ("NV Power Mode: 10W\n", ("10W", None)),
        (None, (None, None)),
        ("", (None, None)),
        ("nvpmodel: command not found\n", (None, None)),
    ],
)
def test_parse_nvpmodel(output, expected):
    assert parse_nvpmodel(output) == expected


# --------------------------------------------------------------------------- identity


def test_device_name_from_device_tree_strips_nul():
    assert device_name(NANO) == "NVIDIA Jetson Nano Developer Kit"
    assert device_name(ORIN) == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"


def test_device_name_falls_back_to_cpu_model(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Some CPU 9000\n")
    assert device_name(str(tmp_path)) == f"Some CPU 9000 ({platform.machine()})"
    assert device_name(str(tmp_path / "empty")) == f"unknown CPU ({platform.machine()})"


def test_device_name_on_this_real_host():
    name = device_name()
    assert isinstance(name, str) and name
    if not os.path.exists("/proc/device-tree/model"):
        assert name.endswith(f"({platform.machine()})")


def test_is_jetson():
    assert is_jetson(NANO)
    assert is_jetson(ORIN)
    assert is_jetson(AGX_ORIN)  # device-tree model only
    assert not is_jetson(str(SYSFS / "does-not-exist"))


# --------------------------------------------------------------------------- throttling


def test_clocks_dropped_between_snapshots():
    nano = snapshot(root=NANO, run=lambda argv: None)
    orin = snapshot(root=ORIN, run=lambda argv: None)
    assert clocks_dropped(nano, orin)  # 921.6 -> 612 MHz
    assert not clocks_dropped(orin, nano)
    assert not clocks_dropped(nano, nano)


def test_clocks_dropped_threshold_and_unknowns():
    def at(mhz):
        return {"clocks_mhz": {"gpu": mhz, "cpu": {}, "emc": None}}

    assert not clocks_dropped(at(1000.0), at(900.0))  # exactly 10%: not more than
    assert clocks_dropped(at(1000.0), at(899.0))
    assert not clocks_dropped(at(1000.0), at(950.0), tolerance=0.1)
    assert clocks_dropped(at(1000.0), at(950.0), tolerance=0.01)
    assert not clocks_dropped(at(None), at(500.0))
    assert not clocks_dropped(at(1000.0), at(None))
    assert not clocks_dropped(None, None)


def test_clocks_dropped_on_tegrastats_lines():
    busy, idle = (parse_tegrastats_line(line) for line in lines("orin_nano_super_jp62.txt"))
    assert clocks_dropped(busy, idle)  # GR3D 612 -> 305 MHz

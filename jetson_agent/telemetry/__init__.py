"""Device telemetry: board power, temperatures, clocks and power mode, as the device reports them.

A latency number means little without the conditions it was taken under (a throttled GPU clock,
a 5 W power mode), and energy per inference needs the board's power over the run. This module
reads those from what a Jetson already offers and never invents a value: on a host without the
source a field is ``None`` (or an empty dict), not a zero that would look like a measurement.

Sources, per JetPack release:

* ``tegrastats`` (every JetPack): one line per interval; :func:`parse_tegrastats_line`.
* INA3221 power monitor in sysfs (:class:`Ina3221`): the NVIDIA iio driver ``ina3221x`` on
  JetPack 4.x (``rail_name_N`` and ``in_powerN_input`` in mW), the mainline hwmon driver
  ``ina3221`` on JetPack 5/6 (``inN_label``, ``inN_input`` in mV, ``currN_input`` in mA).
* ``/sys/class/thermal``, ``/sys/class/devfreq``, cpufreq and ``nvpmodel -q``
  (:func:`snapshot`).

Board power ("total_power_mw") is the module's *input* rail only, never a sum of rails:

* ``POM_5V_IN`` on the Jetson Nano (channel 0 of the INA3221 at 0x40; NVIDIA's Nano power
  guide calls it VDD_IN, the main module power input),
* ``VDD_IN`` on Xavier NX, Orin NX and Orin Nano ("total module power" in the Orin power guide),
  and on TX1/TX2 where it is likewise the module input,
* ``VIN`` on Jetson Thor (its INA238 measures the total input, per NVIDIA's forum answer).

Jetson AGX Xavier and AGX Orin have no input channel: AGX Orin's rails are VDD_GPU_SOC,
VDD_CPU_CV, VIN_SYS_5V0 ("system 5V power rail", not the module input) and VDDQ_VDD2_1V8AO,
which VIN_SYS_5V0 itself supplies, so any sum double-counts or misses part of the module. There
``total_power_mw`` is ``None`` and the per-rail figures stay available under ``rails_mw``.

One module per source: :mod:`.tegrastats`, :mod:`.ina3221` (with :mod:`.rails`: which rail is
the input), :mod:`.power` (sampling during a run, energy per inference), :mod:`.conditions`
(thermal zones, clocks, power mode, throttling) and :mod:`.identity`, all reading through
:mod:`.files`. This package exports what the agent uses.

Standard library only and valid on Python 3.6 (JetPack 4.6).
"""

from .conditions import clocks_dropped, parse_nvpmodel, snapshot
from .files import run_command
from .identity import device_name, is_jetson
from .ina3221 import Ina3221, read_ina3221
from .power import PowerMonitor, energy_report
from .tegrastats import parse_tegrastats_line

__all__ = [
    "Ina3221",
    "PowerMonitor",
    "clocks_dropped",
    "device_name",
    "energy_report",
    "is_jetson",
    "parse_nvpmodel",
    "parse_tegrastats_line",
    "read_ina3221",
    "run_command",
    "snapshot",
]

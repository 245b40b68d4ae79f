"""The INA3221 power monitor in sysfs: JetPack 4's iio driver and the mainline hwmon driver."""

import glob
import os

from .files import numbered, path, read_int, read_text
from .rails import input_rail


class Ina3221(object):
    """The INA3221 power rails in sysfs, found once and then read cheaply at ~10 Hz.

    JetPack 4.x (NVIDIA iio driver): ``/sys/bus/i2c/drivers/ina3221x/<bus-addr>/iio:device<N>/``
    with ``rail_name_<c>`` and ``in_power<c>_input`` in mW (channels from 0).
    JetPack 5/6 (hwmon driver): ``/sys/bus/i2c/drivers/ina3221/<bus-addr>/hwmon/hwmon<N>/`` with
    ``in<c>_label``, ``in<c>_input`` in mV and ``curr<c>_input`` in mA (channels from 1); power is
    mV x mA / 1000. Channels labelled ``NC`` (not connected) and the "sum of shunt voltages"
    channel (a label but no current) are skipped.
    """

    def __init__(self, root="/"):
        # type: (str) -> None
        self.root = root
        self.driver = None  # type: Optional[str]
        # (rail, power file) for iio; (rail, mV file, mA file) for hwmon
        self._iio = []  # type: List[Tuple[str, str]]
        self._hwmon = []  # type: List[Tuple[str, str, str]]
        self._discover_iio()
        if not self._iio:
            self._discover_hwmon()

    def _discover_iio(self):
        # type: () -> None
        """JetPack 4: one power file per named rail."""
        base = path(self.root, "sys/bus/i2c/drivers/ina3221x")
        names = glob.glob(os.path.join(base, "*", "iio:device*", "rail_name_*"))
        for channel, name_file in numbered(names, r"^rail_name_(\d+)$"):
            rail = read_text(name_file)
            power = os.path.join(os.path.dirname(name_file), "in_power%d_input" % channel)
            if rail and os.path.exists(power):
                self._iio.append((rail, power))
        if self._iio:
            self.driver = "ina3221x"

    def _discover_hwmon(self):
        # type: () -> None
        """JetPack 5/6: a voltage and a current file per labelled channel."""
        base = path(self.root, "sys/bus/i2c/drivers/ina3221")
        labels = glob.glob(os.path.join(base, "*", "hwmon", "hwmon*", "in*_label"))
        for channel, label_file in numbered(labels, r"^in(\d+)_label$"):
            rail = read_text(label_file)
            folder = os.path.dirname(label_file)
            volts = os.path.join(folder, "in%d_input" % channel)
            amps = os.path.join(folder, "curr%d_input" % channel)
            if rail and rail != "NC" and os.path.exists(volts) and os.path.exists(amps):
                self._hwmon.append((rail, volts, amps))
        if self._hwmon:
            self.driver = "ina3221"

    def available(self):
        # type: () -> bool
        """Whether any INA3221 rail was found under ``root``."""
        return self.driver is not None

    def read_rails(self):
        # type: () -> Dict[str, float]
        """Instantaneous power of every rail, in mW; a rail that fails to read is left out."""
        rails = {}  # type: Dict[str, float]
        for rail, power_file in self._iio:
            value = read_int(power_file)
            if value is not None:
                rails[rail] = float(value)
        for rail, volts_file, amps_file in self._hwmon:
            millivolts, milliamps = read_int(volts_file), read_int(amps_file)
            if millivolts is not None and milliamps is not None:
                rails[rail] = millivolts * milliamps / 1000.0
        return rails

    def read(self):
        # type: () -> Dict[str, Any]
        """Rails plus the board input rail as ``total_power_mw`` (None when the module has no
        input channel, e.g. AGX Orin), with the same keys as a parsed tegrastats line."""
        rails = self.read_rails()
        rail = input_rail(rails)
        return {
            "rails_mw": rails,
            "total_power_mw": rails[rail] if rail is not None else None,
            "total_power_rail": rail,
        }


def read_ina3221(root="/"):
    # type: (str) -> Dict[str, Any]
    """One reading of the INA3221 rails under ``root`` (see :class:`Ina3221`)."""
    return Ina3221(root).read()

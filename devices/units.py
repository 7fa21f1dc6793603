"""Unit conversion for the usual pairs, as `value * scale + offset`.

Units are spelled as in the catalog (SenML / UCUM): `Cel`, `[degF]`, `K`, `V`, `mV`,
`A`, `mA`, `W`, `kW`, `Wh`, `kWh`, `Pa`, `hPa`, `kPa`, `m/s`, `km/h`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Conversion:
    scale: float
    offset: float = 0.0

    def __call__(self, value: float) -> float:
        return value * self.scale + self.offset

    def inverse(self) -> Conversion:
        return Conversion(1.0 / self.scale, -self.offset / self.scale)


_ONE_WAY: dict[tuple[str, str], Conversion] = {
    ("[degF]", "Cel"): Conversion(5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("K", "Cel"): Conversion(1.0, -273.15),
    ("mV", "V"): Conversion(1e-3),
    ("mA", "A"): Conversion(1e-3),
    ("kW", "W"): Conversion(1e3),
    ("Wh", "kWh"): Conversion(1e-3),
    ("hPa", "Pa"): Conversion(1e2),
    ("kPa", "Pa"): Conversion(1e3),
    ("kPa", "hPa"): Conversion(1e1),
    ("km/h", "m/s"): Conversion(1.0 / 3.6),
}
CONVERSIONS: dict[tuple[str, str], Conversion] = {
    **_ONE_WAY,
    **{(b, a): c.inverse() for (a, b), c in _ONE_WAY.items()},
}


def conversion(from_unit: str, to_unit: str) -> Conversion | None:
    """How to turn a value in `from_unit` into `to_unit`; None if we do not know."""
    return CONVERSIONS.get((from_unit, to_unit))

"""Carbon and everyday equivalents: joules -> grams CO2e, phone charges and kettle boils.

Why these constants (also in ``docs/energy.md``):

* Grid intensity default **475 gCO2e/kWh**: the IEA's global-average carbon intensity of electricity
  generation (IEA, *Global Energy & CO2 Status Report 2019*: ~475 g/kWh in 2018; Ember's *Global Electricity
  Review* reports about the same, ~480 g/kWh, for 2023). Set ``grid_g_per_kwh`` in the config to your grid's
  figure (Electricity Maps, your utility): a hydro/nuclear grid is tens of g/kWh, a coal-heavy one 600-900.
* One smartphone charge: **0.0135 kWh**, the middle of 0.012-0.015 kWh, which is the battery energy of a
  typical 3,100-3,900 mAh × 3.85 V phone (12-15 Wh) before charger losses. Charger and standby losses push
  wall-socket figures higher, so this equivalent, if anything, flatters the charges count upwards.
* Boiling a kettle: **0.1 kWh**, about one litre from tap temperature: 1 kg × 4.186 kJ/(kg·K) × 80 K
  = 0.093 kWh, plus heat lost from a typical electric kettle.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..config import DEFAULT_GRID_G_PER_KWH

J_PER_KWH = 3.6e6
GRID_SOURCE = "IEA world-average carbon intensity of electricity, ~475 gCO2e/kWh (2018); Ember ~480 (2023)"
PHONE_CHARGE_KWH = 0.0135
KETTLE_BOIL_KWH = 0.1
PHONE_CHARGE_SOURCE = "one smartphone charge ~0.012-0.015 kWh (12-15 Wh battery), counted as 0.0135 kWh"
KETTLE_BOIL_SOURCE = "one kettle boil ~0.1 kWh (1 L heated 80 K = 0.093 kWh, plus losses)"


def kwh(joules: float) -> float:
    """Joules to kilowatt-hours."""
    return joules / J_PER_KWH


def co2e_grams(joules: float, grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH) -> float:
    """Grams CO2e for ``joules`` of electricity at ``grid_g_per_kwh`` (operational emissions only)."""
    if grid_g_per_kwh < 0:
        raise ValueError("grid intensity is non-negative (gCO2e per kWh)")
    return kwh(joules) * grid_g_per_kwh


@dataclass(frozen=True)
class Equivalents:
    """The same energy in everyday terms, with the constants that were used (so a reader can check)."""

    joules: float
    kwh: float
    co2e_g: float
    grid_g_per_kwh: float
    phone_charges: float
    kettle_boils: float
    intensity_from: str = ""
    """Where ``grid_g_per_kwh`` comes from, when it is not simply the figure given (shown in the sentence)."""
    records: int = 0
    """Ledger records behind these figures (0: not ledger records)."""
    records_without_co2e: int = 0
    """Of ``records``, those that carry no CO2e figure: ``co2e_g`` and the intensity leave them out."""
    joules_without_co2e: float = 0.0
    """Their joules (in ``joules``, not in ``co2e_g``)."""
    estimated: bool = False
    """``co2e_g`` is ``joules`` at a static intensity, not the records' own figures (none carry one)."""

    def co2e_note(self) -> str:
        """What ``co2e_g`` leaves out, for people (empty when nothing is left out):
        ``4 of 10 records have no CO2e figure (1.2 kJ not counted)``."""
        return missing_co2e_note(self.records, self.records_without_co2e, self.joules_without_co2e)

    def sentence(self) -> str:
        """One line for people: ``1.2 kJ (0.00033 kWh) ≈ 0.025 phone charges ≈ 0.0033 kettle boils, 0.16 g CO2e``."""
        note = self.co2e_note()
        return (
            f"{format_joules(self.joules)} ({figure(self.kwh)} kWh) ≈ {figure(self.phone_charges)} phone charges ≈ "
            f"{figure(self.kettle_boils)} kettle boils; {figure(self.co2e_g)} g CO2e at {self.grid_g_per_kwh:g} g/kWh"
            + (f" ({self.intensity_from})" if self.intensity_from else "")
            + (f"; {note}" if note else "")
        )


def equivalents(joules: float, grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH) -> Equivalents:
    """``joules`` as kWh, grams CO2e, smartphone charges and kettle boils."""
    e = kwh(joules)
    return Equivalents(
        joules=joules,
        kwh=e,
        co2e_g=co2e_grams(joules, grid_g_per_kwh),
        grid_g_per_kwh=grid_g_per_kwh,
        phone_charges=e / PHONE_CHARGE_KWH,
        kettle_boils=e / KETTLE_BOIL_KWH,
    )


def missing_co2e_note(records: int, without_co2e: int, joules_without_co2e: float) -> str:
    """The words every view of the ledger uses for records its grams leave out (empty when none are):
    ``4 of 10 records have no CO2e figure (1.2 kJ not counted)``. Also for views whose grams are always the
    recorded ones, even where :func:`recorded_equivalents` falls back to an estimate (the carbon tables)."""
    if not without_co2e:
        return ""
    return (f"{without_co2e:,} of {records:,} records have no CO2e figure "
            f"({format_joules(joules_without_co2e)} not counted)")


def recorded_intensity(joules: float, co2e_g: float) -> float | None:
    """The carbon intensity of ledger records: their grams CO2e per kWh drawn (``None`` without joules).

    A record's CO2e is computed once, when it is written (:meth:`router.carbon.grid.Grid.carbon_of`: its joules ×
    the PUE, for a model on this host × its zone's intensity at that hour), and views sum the records' figures. So
    this intensity is the one that turns their joules into their grams, PUE and each record's zone included;
    reports, the dashboard and ``router ledger`` all show it, and so agree."""
    return co2e_g / kwh(joules) if joules > 0 else None


def recorded_equivalents(joules: float, co2e_g: float, fallback_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH, *,
                         records: int = 0, gaps: tuple[int, float] = (0, 0.0)) -> Equivalents:
    """``joules`` of ``records`` ledger records in everyday terms with the grams CO2e the records carry, at their
    :func:`recorded_intensity`; ``fallback_g_per_kwh`` (the config's static figure) only when they carry none, and
    then labelled as such. Every view of the ledger shows its total through this.

    ``gaps``: how many of the records carry no CO2e figure and their joules (:meth:`~router.ledger.Ledger.carbon_gaps`;
    the hourly summaries count them as 0 g). The grams stay the recorded ones and the intensity is over the joules
    that have a figure, so neither is understated; the sentence says what is left out."""
    missing, missing_j = gaps
    g = recorded_intensity(joules - missing_j, co2e_g)
    if g is None or co2e_g <= 0:
        return dataclasses.replace(equivalents(joules, fallback_g_per_kwh), records=records, estimated=True,
                                   intensity_from="config `grid_g_per_kwh`: no CO2e recorded")
    return dataclasses.replace(equivalents(joules, g), co2e_g=co2e_g,
                               intensity_from="the records' own: each one's zone and hour, PUE included",
                               records=records, records_without_co2e=missing, joules_without_co2e=missing_j)


_JOULE_UNITS = ((1e18, "EJ"), (1e15, "PJ"), (1e12, "TJ"), (1e9, "GJ"), (1e6, "MJ"), (1e3, "kJ"), (1.0, "J"),
                (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ"), (1e-12, "pJ"))
"""Largest first. Past either end the figure is joules in scientific notation (``1e+21 J``, ``1e-15 J``): a
prefix nobody reads (zJ, ZJ), or ``1e-06 mJ``, which looks like a millionth of a joule, would be worse."""


def format_joules(joules: float) -> str:
    """Human units: ``850 mJ``, ``12.3 J``, ``4.5 kJ``, ``2.1 MJ``, ``3 nJ``. The unit is chosen after rounding to
    three figures, so 999.6 J reads ``1 kJ``, not ``1e+03 J``."""
    if joules == 0:
        return "0 J"
    rounded = abs(float(f"{joules:.3g}"))
    if rounded < _JOULE_UNITS[0][0] * 1000:
        for size, unit in _JOULE_UNITS:
            if rounded >= size:
                return f"{joules / size:.3g} {unit}"
    return f"{joules:.3g} J"


def figure(value: float) -> str:
    """``value`` to three significant figures, as people write it: ``20,600`` and ``0.000278``, not ``2.06e+04``;
    scientific notation only where plain digits would run long (below 0.0001, from 10^9 up)."""
    rounded = float(f"{value:.3g}")
    if rounded == 0 or not 1e-4 <= abs(rounded) < 1e9:
        return f"{value:.3g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(rounded))))
    text = f"{rounded:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text

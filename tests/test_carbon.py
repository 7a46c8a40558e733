"""CO2e and everyday equivalents: the arithmetic, checked against hand-computed figures."""

from __future__ import annotations

import pytest

from router.energy.carbon import co2e_grams, equivalents, format_joules, kwh


def test_one_kwh_at_the_default_grid() -> None:
    assert kwh(3.6e6) == 1.0
    assert co2e_grams(3.6e6) == pytest.approx(475.0)
    assert co2e_grams(3.6e6, grid_g_per_kwh=50.0) == pytest.approx(50.0)


def test_equivalents_of_a_kettle_boil() -> None:
    e = equivalents(360_000.0, grid_g_per_kwh=400.0)  # 0.1 kWh
    assert e.kettle_boils == pytest.approx(1.0)
    assert e.phone_charges == pytest.approx(0.1 / 0.0135)
    assert e.co2e_g == pytest.approx(40.0)
    assert "kettle boils" in e.sentence() and "400 g/kWh" in e.sentence()


def test_negative_grid_is_rejected() -> None:
    with pytest.raises(ValueError):
        co2e_grams(1.0, -1.0)


@pytest.mark.parametrize(
    ("joules", "text"), [(0, "0 J"), (0.25, "250 mJ"), (12.34, "12.3 J"), (4500, "4.5 kJ"), (2.1e6, "2.1 MJ"),
                         # the unit after rounding: 999.6 J is "1 kJ", not "1e+03 J"
                         (999.6, "1 kJ"), (0.9996, "1 J"), (999_600.0, "1 MJ"), (2e9, "2 GJ"), (-999.6, "-1 kJ"),
                         (0.0004, "400 µJ"), (9.996e-4, "1 mJ"), (1e-9, "1 nJ"), (3.2e-11, "32 pJ"),
                         (1e-13, "1e-13 J"), (1e15, "1 PJ"), (-2e18, "-2 EJ"), (999.6e18, "1e+21 J")]
)
def test_format_joules(joules: float, text: str) -> None:
    assert format_joules(joules) == text

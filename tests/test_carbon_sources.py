"""Carbon intensity sources: the shipped series (time of year, offset, gaps), the persistence forecast, the HTTP
provider against a local server in Electricity Maps' shape (cache, timeout, last good value), the planner, and
the zone per model card without PUE counted twice."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from forking import in_a_forked_child
from servers.grid_api import GridApi

from router.carbon import Grid, HttpIntensity, PersistenceForecast, SeriesIntensity, StaticIntensity, plan
from router.carbon.grid import FileClock, shipped_series
from router.cards import load_cards
from router.config import RouterConfig
from router.errors import ConfigError

CA = shipped_series("CA_2022_hourly.csv")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_the_shipped_series_by_time_of_year_and_offset() -> None:
    s = SeriesIntensity(CA)
    assert s.n == 8760 and s.gaps == 3  # three hours are empty as published; they are interpolated
    assert s.intensity(ts("2022-01-01T00:30")).g_per_kwh == pytest.approx(222.30)
    # another year reads the same hour of the year
    assert s.intensity(ts("2026-01-01T01:10")).g_per_kwh == pytest.approx(260.92)
    # the published gap at 2022-01-05 10:00 is the mean of its neighbours
    lines = CA.read_text().splitlines()
    before, after = float(lines[106].split(",")[1]), float(lines[108].split(",")[1])
    assert lines[107].endswith(",") and s.intensity(ts("2022-01-05T10:00")).g_per_kwh == pytest.approx(
        (before + after) / 2)
    shifted = SeriesIntensity(CA, replay="offset", offset_s=ts("2022-01-01T00:00") - ts("2030-06-01T00:00"))
    assert shifted.intensity(ts("2030-06-01T02:00")).g_per_kwh == pytest.approx(271.89)
    assert s.label == "file:CA_2022_hourly.csv"


def test_bad_series_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,value\n")
    with pytest.raises(ConfigError, match="header"):
        SeriesIntensity(bad)
    bad.write_text("timestamp,g_co2e_per_kwh\n2022-01-01 00:00:00+00:00,-5\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2"):
        SeriesIntensity(bad)


def test_rows_in_one_hour_are_averaged_and_a_timestamp_written_twice_is_refused(tmp_path: Path) -> None:
    """Two rows in one hour used to leave the last one standing, silently."""
    series = tmp_path / "quarter-hours.csv"
    series.write_text("timestamp,g_co2e_per_kwh\n2022-01-01T00:00Z,100\n2022-01-01T00:30Z,200\n"
                      "2022-01-01T01:00Z,400\n2022-01-01T01:15Z,\n2022-01-01T02:00Z,50\n")
    s = SeriesIntensity(series, replay="offset")
    assert list(s.values) == [150.0, 400.0, 50.0] and s.gaps == 0, "an empty row adds nothing to its hour"
    twice = tmp_path / "twice.csv"
    twice.write_text("timestamp,g_co2e_per_kwh\n2022-01-01T00:00Z,100\n2022-01-01T01:00Z,200\n"
                     "2022-01-01T00:00:00+00:00,300\n")
    with pytest.raises(ConfigError) as err:
        SeriesIntensity(twice)
    assert str(err.value).startswith(f"{twice}:4: timestamp '2022-01-01T00:00:00+00:00' is also on line 2; fix:")


def test_a_series_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte-order mark; the header was refused as `\\ufefftimestamp`."""
    series = tmp_path / "excel.csv"
    series.write_text("timestamp,g_co2e_per_kwh\r\n2022-01-01T00:00Z,100\r\n2022-01-01T01:00Z,200\r\n",
                      encoding="utf-8-sig")
    assert series.read_bytes().startswith(b"\xef\xbb\xbftimestamp")
    s = SeriesIntensity(series, replay="offset")
    assert list(s.values) == [100.0, 200.0] and s.start == ts("2022-01-01T00:00")


def test_persistence_is_yesterdays_same_hour_and_the_file_forecast_is_the_series() -> None:
    s = SeriesIntensity(CA)
    now = ts("2022-07-10T05:30")
    perfect = s.forecast(now, now + 86_400, now)
    honest = PersistenceForecast(s).forecast(now, now + 86_400, now)
    assert [h for h, _ in perfect] == [h for h, _ in honest] and len(perfect) == 25
    assert honest[0][1] == perfect[0][1], "the current hour is known"
    for (h, g) in honest[1:]:
        assert g == pytest.approx(s.intensity(h - 86_400).g_per_kwh)
    assert perfect[5][1] == pytest.approx(s.intensity(perfect[5][0]).g_per_kwh)


def test_plan_picks_the_cleanest_hours_and_the_deadline_wins() -> None:
    now = 0.0
    fc = [(h * 3600.0, g) for h, g in enumerate([300, 280, 120, 110, 400, 90])]
    p = plan(fc, now=now, deadline=6 * 3600, lines_left=10, lines_per_hour=100)
    assert not p.run_now and p.hours == [5 * 3600.0]
    # what `router batch show` and the batch's carbon.plan print: a time, as every other one the CLI names
    assert p.reason == "waiting for cleaner hours (90 g/kWh forecast from 1970-01-01 05:00 UTC)", p.reason
    p = plan(fc, now=now, deadline=6 * 3600, lines_left=150, lines_per_hour=100)
    assert p.hours == [2 * 3600.0, 3 * 3600.0, 5 * 3600.0] and not p.run_now
    late = plan(fc, now=now, deadline=6 * 3600, lines_left=290, lines_per_hour=100)
    assert late.run_now and "deadline" in late.reason
    flat = plan([(h * 3600.0, 475.0) for h in range(24)], now=10.0, deadline=86_400, lines_left=5,
                lines_per_hour=100)
    assert flat.run_now, "a flat intensity starts at once"


def test_http_source_caches_falls_back_and_forecasts() -> None:
    api = GridApi()
    try:
        now = time.time()
        api.latest = (210.0, now)
        api.forecast = [(now + 3600 * k, 100.0 + k) for k in range(1, 4)]
        src = HttpIntensity(api.url, "DE", api_key="test-token", timeout_s=0.5, cache_s=3600, fallback_g_per_kwh=475)
        first = src.intensity(now)
        assert first.g_per_kwh == 475 and "fallback" in first.source, "never blocks: the first answer is the fallback"
        deadline = time.time() + 5
        while src.intensity(now).g_per_kwh != 210.0:
            assert time.time() < deadline
            time.sleep(0.02)
        calls = api.calls["latest"]
        for _ in range(50):
            src.intensity(now)
        assert api.calls["latest"] == calls, "cached for cache_s"
        fc = src.forecast(now, now + 4 * 3600, now)
        assert [g for _, g in fc] == [210.0, 101.0, 102.0, 103.0, 103.0], "past the horizon: its last value"
        # the API fails: the last good value stays
        api.fail = True
        assert src.refresh_latest() is None
        assert src.intensity(now).g_per_kwh == 210.0
        # a slow API is cut off by the timeout
        api.fail, api.delay = False, 2.0
        t0 = time.perf_counter()
        assert src.refresh_latest() is None and time.perf_counter() - t0 < 1.5
        src.close()
        wrong = HttpIntensity(api.url, "DE", api_key="wrong", timeout_s=3)
        api.delay = 0
        assert wrong.refresh_latest() is None and wrong.failures == 1
    finally:
        api.close()


def test_zone_per_card_and_pue_only_on_this_hosts_joules(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    cards = load_cards(root / "models")
    grid = Grid({"US-CAL": StaticIntensity(200.0), "EU": StaticIntensity(50.0)}, host_zone="US-CAL",
                hosted_zone="EU", pue=1.5)
    local = cards["smollm2-135m"]
    hosted = load_cards(root / "models" / "catalogue")["gpt-4-1106-preview"].model_copy(update={"zone": None})
    assert grid.carbon_of(local, 3.6e6) == (pytest.approx(300.0), 200.0, "US-CAL")
    assert grid.carbon_of(hosted, 3.6e6) == (pytest.approx(50.0), 50.0, "EU"), "a hosted card's joules include its PUE"
    assert grid.zone_of(hosted.model_copy(update={"zone": "US-TEX"})) == "US-TEX"
    # each card's zone is worked out once: a card made anew with another zone is placed anew, the first one stays
    moved = hosted.model_copy(update={"zone": "US-CAL"})
    assert grid.carbon_of(moved, 3.6e6) == (pytest.approx(200.0), 200.0, "US-CAL")
    assert grid.carbon_of(hosted, 3.6e6) == (pytest.approx(50.0), 50.0, "EU")
    assert grid.carbon_of(local, 3.6e6) == (pytest.approx(300.0), 200.0, "US-CAL")
    assert grid.intensity("nowhere").g_per_kwh == 475.0, "an unlisted zone: the static grid_g_per_kwh"
    clock = tmp_path / "clock"
    clock.write_text("1656633600")
    assert FileClock(clock)() == 1656633600.0
    cfg = RouterConfig.model_validate({"carbon": {"zones": {"local": {"type": "file", "path": "TX_2022_hourly.csv"}},
                                                  "clock_file": str(clock)}})
    g = Grid.from_settings(cfg.carbon, cfg.grid_g_per_kwh)
    assert g.intensity("local").source == "file:TX_2022_hourly.csv"
    with pytest.raises(ConfigError, match="needs `path`"):
        RouterConfig.model_validate({"carbon": {"zones": {"x": {"type": "file"}}}})


def test_a_host_zone_missing_from_the_configured_zones_is_refused(tmp_path: Path) -> None:
    """`zone: US-CA` beside `zones: {US-CAL: ...}` used to load, and every local record silently carried 475 g/kWh."""
    config = tmp_path / "router.yaml"
    config.write_text("carbon:\n  zone: US-CA\n  zones: {US-CAL: {type: static, g_per_kwh: 100}}\n")
    with pytest.raises(ConfigError) as err:
        RouterConfig.load(config)
    msg = str(err.value)
    assert msg.startswith(f"{config}: field `carbon`: `carbon.zone` 'US-CA' is not one of the configured")
    assert "(US-CAL)" in msg and "fix: correct the spelling, or add the zone under `zones`" in msg
    fine = [{"zone": "US-CAL", "zones": {"US-CAL": {"g_per_kwh": 100}}},  # listed
            {"zones": {"US-CAL": {"g_per_kwh": 100}}},  # not set: a host zone of its own, at the static figure
            {"zone": "US-CA"}]  # no zones configured at all: the static figure, as documented
    for carbon in fine:
        RouterConfig.model_validate({"carbon": carbon})


def test_a_cards_zone_missing_from_the_configured_zones_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from router._parts import load_engine

    root = Path(__file__).resolve().parents[1]
    cards = load_cards(root / "models")
    cards["smollm2-135m"] = cards["smollm2-135m"].model_copy(update={"zone": "US-CA"})
    cards["gemma3-270m"] = cards["gemma3-270m"].model_copy(update={"zone": "US-CAL"})
    config = RouterConfig.model_validate({"carbon": {"zones": {"US-CAL": {"g_per_kwh": 100}}}})
    with caplog.at_level("WARNING", logger="router"):
        load_engine(config, cards, config.default_policy)
    warned = [r.getMessage() for r in caplog.records if "carbon.zones" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"{cards['smollm2-135m'].path}: field `zone`: 'US-CA' is not one of the configured")
    caplog.clear()
    with caplog.at_level("WARNING", logger="router"):  # no zones configured: every zone is the static figure
        load_engine(RouterConfig(), cards, config.default_policy)
    assert not [r for r in caplog.records if "carbon.zones" in r.getMessage()]


def test_relative_paths_in_a_config_file_are_relative_to_its_folder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A zone's `path: series/ca.csv` was read from the working directory, so the same config found its series only
    when started from its own folder; now every path a config file names is relative to that file's folder."""
    folder = tmp_path / "deploy"
    (folder / "series").mkdir(parents=True)
    series = "timestamp,g_co2e_per_kwh\n2022-01-01T00:00Z,100\n2022-01-01T01:00Z,300\n"
    (folder / "series" / "ca.csv").write_text(series)
    (folder / "clock").write_text("1640995200")  # 2022-01-01 00:00 UTC
    config = folder / "router.yaml"
    config.write_text("models_dir: models\npolicies_dir: ./policies\njournal: {folder: journal}\n"
                      "dashboard: {simulation: sims/run.json}\n"
                      "carbon:\n  zone: CA\n  clock_file: clock\n  zones:\n"
                      "    CA: {type: file, path: series/ca.csv, replay: offset, offset_s: 3600}\n"
                      "    TX: {type: file, path: TX_2022_hourly.csv}\n"  # a shipped series, by name
                      f"    NY: {{type: file, path: {CA}}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = RouterConfig.load(config)
    assert cfg.models_dir == folder / "models" and cfg.policies_dir == folder / "policies"
    assert cfg.journal.folder == folder / "journal" and cfg.dashboard.simulation == folder / "sims" / "run.json"
    assert cfg.carbon.clock_file == folder / "clock" and cfg.carbon.zones["NY"].path == CA
    grid = Grid.from_settings(cfg.carbon, cfg.grid_g_per_kwh)
    assert grid.intensity("CA").g_per_kwh == 300.0, "the series beside the config, at the file clock's time + 1 h"
    assert grid.intensity("TX").source == "file:TX_2022_hourly.csv"
    assert RouterConfig.load(config, models_dir="m").models_dir == Path("m"), "an option is the caller's: as given"
    config.write_text("carbon:\n  zones: {CA: {type: file, path: series/missing.csv}}\n")
    with pytest.raises(ConfigError, match=f"{folder / 'series' / 'missing.csv'}: cannot read"):
        Grid.from_settings(RouterConfig.load(config).carbon, 475.0)


def test_home_paths_in_a_config_are_the_users_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/energy.md: `~/` paths are taken as written, i.e. in the user's home folder. `models_dir: ~/cards` was
    kept as a folder literally named `~` in the working directory, so the Router refused a folder that exists."""
    home = tmp_path / "home"
    (home / "cards").mkdir(parents=True)
    (home / "ca.csv").write_text("timestamp,g_co2e_per_kwh\n2022-01-01T00:00Z,100\n2022-01-01T01:00Z,300\n")
    (home / "clock").write_text("1640995200")  # 2022-01-01 00:00 UTC
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "etc" / "router.yaml"
    config.parent.mkdir()
    config.write_text("models_dir: ~/cards\npolicies_dir: ~/policies\njournal: {folder: ~/journal}\n"
                      "dashboard: {simulation: ~/sims}\n"
                      "carbon:\n  zone: CA\n  clock_file: ~/clock\n  zones: {CA: {type: file, path: ~/ca.csv}}\n")
    cfg = RouterConfig.load(config)
    assert cfg.models_dir == home / "cards" and cfg.policies_dir == home / "policies"
    assert cfg.journal.folder == home / "journal" and cfg.dashboard.simulation == home / "sims"
    assert cfg.carbon.clock_file == home / "clock" and cfg.carbon.zones["CA"].path == home / "ca.csv"
    assert Grid.from_settings(cfg.carbon, cfg.grid_g_per_kwh).intensity("CA").g_per_kwh == 100.0
    # in code, as from the environment: the same home folder
    assert RouterConfig(models_dir="~/cards").models_dir == home / "cards"
    monkeypatch.setenv("ROUTER_POLICIES_DIR", "~/policies")
    assert RouterConfig.load().policies_dir == home / "policies"


def test_an_infinite_intensity_from_the_api_is_a_failed_answer() -> None:
    """Python's JSON reader takes ``Infinity`` (and ``1e400``) as a float: such a value would price every request's
    CO2e at infinity, so it is refused like a negative one and the last good value stays."""
    api = GridApi()  # the server writes float("inf") as JSON `Infinity`, as Python's json.dumps does
    try:
        now = time.time()
        api.latest = (210.0, now)
        src = HttpIntensity(api.url, "DE", api_key="test-token", timeout_s=3, cache_s=3600)
        assert src.refresh_latest() == 210.0
        api.latest = (float("inf"), now)
        assert src.refresh_latest() is None and src.failures == 1
        assert src.intensity(now).g_per_kwh == 210.0
        api.forecast = [(now + 3600, 100.0), (now + 7200, float("inf"))]
        assert src.refresh_forecast() is False and src.failures == 2
        src.close()
    finally:
        api.close()


def test_a_child_forked_during_a_refresh_refreshes_on_its_own() -> None:
    """A child forked while the parent's refresh is in flight (gunicorn --preload, Celery prefork) fetches the
    intensity itself; before, it inherited the flag that says a refresh runs, and stayed on the fallback for good."""
    api = GridApi()
    try:
        now = time.time()
        api.latest, api.delay = (210.0, now), 1.0  # a slow API: the parent's refresh is in flight at the fork
        src = HttpIntensity(api.url, "DE", api_key="test-token", timeout_s=10, cache_s=3600)
        assert "fallback" in src.intensity(now).source, "the parent's first call starts the refresh"

        def in_the_child() -> None:
            deadline = time.time() + 20
            while src.intensity(now).g_per_kwh != 210.0:
                assert time.time() < deadline, "the child never had the API's figure"
                time.sleep(0.05)

        in_a_forked_child(in_the_child, "the child fetched the intensity")
        src.close()
    finally:
        api.close()


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e300", "-5", "noon"])
def test_a_clock_file_holding_no_time_is_refused(tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture) -> None:
    """`nan` or `inf` in carbon.clock_file was taken as the time and failed every intensity lookup after it (a
    series index of NaN, a timestamp past any date); text that is no number was ignored without a word."""
    clock = tmp_path / "clock"
    clock.write_text(f"{text}\n")
    cfg = RouterConfig.model_validate({"carbon": {"zones": {"local": {"type": "file", "path": "CA_2022_hourly.csv"}},
                                                  "clock_file": str(clock)}})
    with pytest.raises(ConfigError, match=rf"carbon.clock_file {clock} holds '{text}', not a time; fix: .*epoch "):
        Grid.from_settings(cfg.carbon, cfg.grid_g_per_kwh)
    # written bad while running: the last good reading stays, every lookup still answers, and the log says why once
    clock.write_text("1656633600")
    grid = Grid.from_settings(cfg.carbon, cfg.grid_g_per_kwh)
    good = grid.intensity("local")
    clock.write_text(text)
    with caplog.at_level("WARNING", logger="router.carbon.grid"):
        assert grid.clock() == 1656633600.0 and grid.intensity("local") == good
    assert [r.getMessage() for r in caplog.records] == [
        f"carbon.clock_file {clock} holds {text!r}, not a time; fix: write the time as epoch seconds, a number from "
        "0 to 253402300800 (e.g. 1656633600 for 2022-07-01 00:00 UTC), or remove clock_file to use the system clock; "
        "keeping the last reading, 1656633600.0"]
    clock.write_text("")  # being rewritten: the last reading, no warning
    assert grid.clock() == 1656633600.0
    clock.write_text("1656637200")
    assert grid.clock() == 1656637200.0

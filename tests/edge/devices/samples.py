"""Real payloads as devices publish them, byte for byte, with their sources, and the
readings each must become. Shared by the decoder tests and the broker + agent tests.

Sources (files under tests/edge/devices/samples/, copied from /work/shared/samples/devices/
and the projects named):
- Tasmota docs: `docs/AM2301.md`, `docs/BME280.md`, `docs/devices/Sonoff-Pow-R2.md`; a
  Tasmota user's log line (US 121 V mains); tasmota/docs `docs/DS18x20.md`,
  `docs/BME680.md` (pretty-printed there, kept so), `docs/BH1750.md`
- zigbee2mqtt.io `docs/guide/usage/mqtt_topics_and_messages.md` (WSDCGQ01LM); a state
  message quoted in Koenkk/zigbee-herdsman-converters issue #1020 (QBKG12LM)
- Shelly Gen2 API docs, General/Notifications, example 1; a captured Gen2 NotifyStatus
  quoted in a public Go project; a Shelly Gen1 plugin's test (`relay/0/power`)
- ESPHome `components/mqtt/mqtt_sensor.cpp` (state topic, value formatted as text),
  `components/mqtt/mqtt_binary_sensor.cpp` (`state ? "ON" : "OFF"`)
- home-assistant.io `source/_integrations/mqtt.markdown`, discovery example (sensorBedroom)
- Telegraf `plugins/inputs/temp/README.md`, example output
- RFC 8428 sections 5.1.1, 5.1.2, 5.1.3
- OwnTracks booklet `docs/tech/json.md`, a location message
- The Things Stack docs `reference/data-formats`, uplink message example
More per ecosystem (28-44; samples/README.md has the details):
- influxdata/telegraf `plugins/inputs/mem/README.md`, `plugins/inputs/cpu/README.md`,
  "Example Output" (one line per message, as outputs.mqtt publishes without `batch`)
- Koenkk/zigbee2mqtt `test/receive.test.js` (WSDCGQ11LM weather sensor, WXKG11LM button)
- owntracks/android `project/app/src/androidTest/.../e2e/ContactsAndMapTests.kt`; the
  openHAB gpstracker binding README (a tracker's location, logged)
- home-assistant.io `source/_integrations/mqtt.markdown` (binary sensor `garden` ON,
  light `kitchen` JSON state)
- ThingsBoard docs, The Things Industries integration guide (a simulated TTS uplink); The
  Things Stack docs `integrations/mqtt/_index.md` (an uplink without decoded_payload)
- Shelly Gen3 NotifyStatus captured in asnowfix/home-automation
  `pkg/shelly/script/follower-switch.js`, `front-door-follower-switch.js`; Gen1 relay state
  in euzu/gohanectl `doc/Shelly_1.md`; Gen3 H&T status messages in JHNUL/home-server-apps
  `homeserver-parent/homeserver-common/messages.md`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"
RECEIVED = None  # the reading carries no time: the agent's receive time


@dataclass(frozen=True, slots=True)
class Expected:
    device: str
    metric: str
    value: float
    unit: str
    time_ns: int | None  # None: the receive time


@dataclass(frozen=True, slots=True)
class Sample:
    profile: str
    file: str
    topic: str
    readings: tuple[Expected, ...]
    refused: str = ""  # the dead letter's reason, for a sample that must give no reading

    @property
    def payload(self) -> bytes:
        return (SAMPLES / self.file).read_bytes()


def _e(device: str, metric: str, value: float, unit: str, time_ns: int | None) -> Expected:
    return Expected(device, metric, value, unit, time_ns)


T_AM2301 = 1546300800 * 10**9  # "2019-01-01T00:00:00", local time in UTC (the profile's zone)
T_BME280 = 1572809668 * 10**9  # "2019-11-03T19:34:28"
T_POW = 1518716230 * 10**9  # "2018-02-15T17:37:10"
T_US = 1601784155 * 10**9  # "2020-10-04T04:02:35"


def _energy(device: str, t: int, v: tuple[float, ...]) -> tuple[Expected, ...]:
    names = [
        ("energy_total", "kWh"),
        ("energy_yesterday", "kWh"),
        ("energy_today", "kWh"),
        ("energy_period", "Wh"),
        ("power", "W"),
        ("apparent_power", "VA"),
        ("reactive_power", "var"),
        ("factor", ""),
        ("voltage", "V"),
        ("current", "A"),
    ]
    return tuple(_e(device, m, x, u, t) for (m, u), x in zip(names, v, strict=True))


def _location(
    device: str, tst: int, *, acc: float, batt: float, lat: float, lon: float
) -> tuple[Expected, ...]:
    """The readings of an OwnTracks location with only these four measurements."""
    t = tst * 10**9
    return (
        _e(device, "accuracy", acc, "m", t),
        _e(device, "battery", batt, "%EL", t),
        _e(device, "latitude", lat, "lat", t),
        _e(device, "longitude", lon, "lon", t),
    )


SAMPLES_BY_PROFILE: tuple[Sample, ...] = (
    Sample(
        "tasmota",
        "01-tasmota-am2301.json",
        "tele/tasmota_C26D46/SENSOR",
        (
            _e("tasmota_C26D46-AM2301", "temperature", 24.6, "Cel", T_AM2301),
            _e("tasmota_C26D46-AM2301", "humidity", 58.2, "%RH", T_AM2301),
        ),
    ),
    Sample(
        "tasmota",
        "02-tasmota-bme280.json",
        "tele/tasmota_C26D46/SENSOR",
        (
            _e("tasmota_C26D46-BME280", "temperature", 21.7, "Cel", T_BME280),
            _e("tasmota_C26D46-BME280", "humidity", 66.6, "%RH", T_BME280),
            _e("tasmota_C26D46-BME280", "pressure", 988.6, "hPa", T_BME280),
        ),
    ),
    Sample(
        "tasmota",
        "03-tasmota-energy-pow-r2.json",
        "tele/pow1/SENSOR",
        _energy(
            "pow1-ENERGY", T_POW, (6.294, 5.34, 0.954, 217, 2635, 2650, 282, 0.99, 227, 11.661)
        ),
    ),
    Sample(
        "tasmota",
        "04-tasmota-energy-us-121v.json",
        "tele/power1/SENSOR",
        _energy("power1-ENERGY", T_US, (8.315, 1.717, 0.35, 8, 87, 89, 22, 0.97, 121, 0.736)),
    ),
    Sample(
        "zigbee2mqtt",
        "05-zigbee2mqtt-wsdcgq01lm.json",
        "zigbee2mqtt/kitchen/weather",  # a friendly name with '/': one device, not two
        (
            _e("kitchen__2Fweather", "temperature", 27.34, "Cel", RECEIVED),
            _e("kitchen__2Fweather", "humidity", 44.72, "%RH", RECEIVED),
        ),
    ),
    Sample(
        "zigbee2mqtt",
        "06-zigbee2mqtt-qbkg12lm.json",
        "zigbee2mqtt/0x00158d0002c4e8a1",
        tuple(
            _e("0x00158d0002c4e8a1", m, v, u, 1582746249 * 10**9)  # last_seen, +01:00
            for m, v, u in [
                ("power", 0, "W"),
                ("consumption", 0.32, "kWh"),
                ("temperature", 16, "Cel"),
                ("linkquality", 34, ""),
                ("state_left", 0, ""),
                ("state_right", 0, ""),
            ]
        ),
    ),
    Sample(
        "shelly",
        "07-shelly-gen2-notifystatus-doc.json",
        "shellypro4pm-f008d1d8b8b8/events/rpc",
        (_e("shellypro4pm-f008d1d8b8b8", "switch_0_output", 1.0, "", 1631186545_040000000),),
    ),
    Sample(
        "shelly",
        "08-shelly-gen2-notifystatus-voltage.json",
        "shellies/plus1pm/events/rpc",
        (_e("shellyplus1pm-4417939341dc", "switch_0_voltage", 232.7, "V", 1661517385_440000000),),
    ),
    Sample(
        "shelly",
        "09-shelly-gen1-relay0-power.txt",
        "shellies/shelly-dimmer-sl-test/relay/0/power",
        (_e("shelly-dimmer-sl-test-0", "power", 101.123, "W", RECEIVED),),
    ),
    Sample(
        "esphome",
        "10-esphome-sensor-state.txt",
        "esp32-dht22/sensor/temperature/state",
        (_e("esp32-dht22", "temperature", 23.5, "Cel", RECEIVED),),
    ),
    Sample(
        "homeassistant",
        "11-homeassistant-sensorBedroom-state.json",
        "homeassistant/sensor/sensorBedroom/state",
        (
            _e("sensorBedroom", "temperature", 23.2, "Cel", RECEIVED),
            _e("sensorBedroom", "humidity", 43.7, "%RH", RECEIVED),
        ),
    ),
    Sample(
        "telegraf",
        "12-telegraf-temp.lp",
        "telegraf/localhost/temp",
        tuple(
            _e(f"localhost-coretemp_physicalid0_{s}", "temperature", v, "Cel", 1531298763 * 10**9)
            for s, v in [("crit", 100), ("critalarm", 0), ("input", 100), ("max", 100)]
        ),
    ),
    Sample(
        "owntracks",
        "16-owntracks-location.json",
        "owntracks/urban/nexus",
        _location("urban-nexus", 1508256136, acc=16, batt=61, lat=59.4313733, lon=18.3259013),
    ),
    Sample(
        "ttn",
        "17-ttn-v3-uplink.json",
        "v3/app1@ttn/devices/dev1/up",
        (
            _e("dev1", "temperature", 1.0, "Cel", 1581520546_014773143),
            _e("dev1", "luminosity", 0.64, "lx", 1581520546_014773143),
        ),
    ),
    Sample(
        "tasmota",
        "24-tasmota-ds18b20.json",
        "tele/tasmota_C26D46/SENSOR",
        (_e("tasmota_C26D46-DS18B20", "temperature", 49.7, "Cel", 1546300800 * 10**9),),
    ),
    Sample(
        "tasmota",
        "25-tasmota-bme680.json",
        "tele/tasmota_C26D46/SENSOR",
        tuple(
            _e("tasmota_C26D46-BME680", m, v, u, 1632330000 * 10**9)  # 2021-09-22T17:00:00
            for m, v, u in [
                ("temperature", 24.5, "Cel"),
                ("humidity", 33.0, "%RH"),
                ("dew_point", 7.1, "Cel"),
                ("pressure", 987.7, "hPa"),
                ("gas", 1086.43, "kOhm"),  # gas resistance
            ]
        ),
    ),
    Sample(
        "tasmota",
        "26-tasmota-bh1750.json",
        "tele/tasmota_C26D46/SENSOR",
        (_e("tasmota_C26D46-BH1750", "illuminance", 79, "lx", 1572813937 * 10**9),),
    ),
    Sample(
        "esphome",
        "27-esphome-binary-sensor-state.txt",
        "esp32-dht22/binary_sensor/motion/state",
        (_e("esp32-dht22", "motion", 1.0, "", RECEIVED),),
    ),
)

_MEM = [  # Telegraf plugins/inputs/mem/README.md, "Example Output", field by field
    ("active", 9299595264),
    ("available", 16818249728),
    ("available_percent", 80.41654254645131),
    ("buffered", 2383761408),
    ("cached", 13316689920),
    ("commit_limit", 14751920128),
    ("committed_as", 11781156864),
    ("dirty", 122880),
    ("free", 1877688320),
    ("high_free", 0),
    ("high_total", 0),
    ("huge_page_size", 2097152),
    ("huge_pages_free", 0),
    ("huge_pages_total", 0),
    ("inactive", 7549939712),
    ("low_free", 0),
    ("low_total", 0),
    ("mapped", 416763904),
    ("page_tables", 19787776),
    ("shared", 670679040),
    ("slab", 2081071104),
    ("sreclaimable", 1923395584),
    ("sunreclaim", 157675520),
    ("swap_cached", 1302528),
    ("swap_free", 4286128128),
    ("swap_total", 4294963200),
    ("total", 20913917952),
    ("used", 3335778304),
    ("used_percent", 15.95004011996231),
    ("vmalloc_chunk", 0),
    ("vmalloc_total", 35184372087808),
    ("vmalloc_used", 0),
    ("wired", 0),
    ("write_back", 0),
    ("write_back_tmp", 0),
]
_CPU0 = (
    31.249999981810106,
    2.083333333080696,
    0,
    68.7500000181899,
    0,
    0,
    0,
    0,
    0,
    4.166666666161392,
    25.000000002273737,
)
_CPU_TOTAL = (
    17.616580305880305,
    1.036269430422946,
    0,
    82.3834196941197,
    0,
    0,
    0,
    1.0362694300459534,
    0,
    4.145077721691784,
    11.398963731636465,
)
_CPU_FIELDS = (
    "active",
    "guest",
    "guest_nice",
    "idle",
    "iowait",
    "irq",
    "nice",
    "softirq",
    "steal",
    "system",
    "user",
)
T_CPU = 1568760922 * 10**9


def _mem_unit(field: str) -> str:
    if field.endswith("_percent"):
        return "%"
    return "" if field.startswith("huge_pages_") else "By"  # a count of pages; else bytes


def _cpu(device: str, values: tuple[float, ...]) -> tuple[Expected, ...]:
    return tuple(
        _e(device, f"cpu_usage_{f}", v, "%", T_CPU)
        for f, v in zip(_CPU_FIELDS, values, strict=True)
    )


# More samples per ecosystem (files 28-44): a profile that passes only the first ones is
# not done. Each names its source in samples/README.md.
MORE_SAMPLES: tuple[Sample, ...] = (
    Sample(
        "telegraf",
        "28-telegraf-mem.lp",  # no host tag at all: the device comes from the topic
        "telegraf/loaner/mem",
        tuple(_e("loaner", f"mem_{f}", v, _mem_unit(f), 1574712869 * 10**9) for f, v in _MEM),
    ),
    Sample("telegraf", "29-telegraf-cpu0.lp", "telegraf/loaner/cpu", _cpu("loaner-cpu0", _CPU0)),
    Sample(
        "telegraf",
        "30-telegraf-cpu-total.lp",  # the same fields as cpu0: a series of its own
        "telegraf/loaner/cpu",
        _cpu("loaner-cpu-total", _CPU_TOTAL),
    ),
    Sample(
        "zigbee2mqtt",
        "31-zigbee2mqtt-wsdcgq11lm.json",
        "zigbee2mqtt/weather_sensor",
        (
            _e("weather_sensor", "battery", 91, "%EL", RECEIVED),
            _e("weather_sensor", "voltage", 2.985, "V", RECEIVED),  # 2985 mV, converted
            _e("weather_sensor", "temperature", 23.5, "Cel", RECEIVED),
            _e("weather_sensor", "humidity", 46.08, "%RH", RECEIVED),
            _e("weather_sensor", "pressure", 915.5, "hPa", RECEIVED),
            _e("weather_sensor", "linkquality", 10, "", RECEIVED),
        ),
    ),
    Sample(
        "zigbee2mqtt",
        "32-zigbee2mqtt-wxkg11lm-click.json",  # "click": "single" is an event, not a value
        "zigbee2mqtt/button",
        (_e("button", "linkquality", 10, "", RECEIVED),),
    ),
    Sample(
        "owntracks",
        "33-owntracks-android-location.json",
        "owntracks/jane/phone",
        tuple(
            _e("jane-phone", m, v, u, 1610799026 * 10**9)
            for m, v, u in [
                ("accuracy", 20, "m"),
                ("battery", 100, "%EL"),
                ("latitude", 51.2, "lat"),
                ("longitude", -4, "lon"),
                ("vertical_accuracy", 40, "m"),
                ("speed", 7 / 3.6, "m/s"),  # 7 km/h, converted to the catalog's unit
            ]
        ),
    ),
    Sample(
        "homeassistant",
        "34-homeassistant-garden-motion.txt",
        "homeassistant/binary_sensor/garden/state",
        (_e("garden", "state", 1.0, "", RECEIVED),),
    ),
    Sample(
        "homeassistant",
        "35-homeassistant-light-kitchen.json",
        "homeassistant/light/kitchen/state",
        (
            _e("kitchen", "state", 1.0, "", RECEIVED),
            _e("kitchen", "brightness", 255, "", RECEIVED),
        ),
    ),
    Sample(
        "ttn",
        "36-ttn-v3-uplink-thingsboard-doc.json",
        "v3/thingsboard-integration@thingsboard/devices/thermostat1/up",
        (_e("thermostat1", "temperature", 2, "Cel", 1597136385_869225403),),
    ),
    Sample(
        "ttn",
        "37-ttn-v3-uplink-no-formatter.json",  # no payload formatter: frm_payload only
        "v3/app1@tenant1/devices/dev1/up",
        (),
        refused="no_readings",
    ),
    Sample(
        "shelly",
        "38-shelly-gen3-1mini-notifystatus.json",
        "shelly1minig3-54320464f17c/events/rpc",
        (_e("shelly1minig3-54320464f17c", "switch_0_output", 0.0, "", 1745708765_600000000),),
    ),
    Sample(
        "shelly",
        "39-shelly-gen3-1mini-notifystatus-on.json",
        "shelly1minig3-543204522cb4/events/rpc",
        (_e("shelly1minig3-543204522cb4", "switch_0_output", 1.0, "", 1734476334_510000000),),
    ),
    Sample(
        "shelly",
        "41-shelly-gen1-shelly1-relay0.txt",  # "on": the relay's state
        "shellies/shelly1-483FDA91BCEF/relay/0",
        (_e("shelly1-483FDA91BCEF-0", "relay", 1.0, "", RECEIVED),),
    ),
    Sample(
        "shelly",
        "42-shelly-gen2-ht-status-temperature.json",
        "shellyht-livingroom/status/temperature:0",
        (
            _e("shellyht-livingroom", "temperature_0_t_c", 20.1, "Cel", RECEIVED),
            _e("shellyht-livingroom", "temperature_0_t_f", 68.3, "[degF]", RECEIVED),
        ),
    ),
    Sample(
        "shelly",
        "43-shelly-gen2-ht-status-devicepower.json",
        "shellyht-livingroom/status/devicepower:0",
        (
            _e("shellyht-livingroom", "devicepower_0_battery_v", 5.46, "V", RECEIVED),
            _e("shellyht-livingroom", "devicepower_0_battery_percent", 73, "%EL", RECEIVED),
            _e("shellyht-livingroom", "devicepower_0_external_present", 0.0, "", RECEIVED),
        ),
    ),
    Sample(
        "shelly",
        "44-shelly-gen2-ht-status-cloud.json",  # the device's own state: not a reading
        "shellyht-livingroom/status/cloud",
        (),
    ),
    Sample(
        "owntracks",
        "40-owntracks-location-openhab-log.json",
        "owntracks/xx/tracker",
        _location("xx-tracker", 1527966973, acc=10.0, batt=96, lat=41.53, lon=16.16),
    ),
)

ALL_SAMPLES = SAMPLES_BY_PROFILE + MORE_SAMPLES
PROFILES = sorted({s.profile for s in ALL_SAMPLES})

//! The two kinds of event streamlab moves: sales (seed 000) and sensor readings (seed 002).
//!
//! One home for their wire format: how they are generated (`Generator`), encoded (JSON, one per
//! Kafka record) and decoded and validated on the way into a database (`decode`).

use compact_str::format_compact;
use fake::faker::address::en::CityName;
use fake::Fake;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// `{id, ts, store_id, amount_usd, channel}`, keyed by store_id.
    Sales,
    /// `{id, sensor_id, val, unit, status, ts}`, keyed by sensor_id.
    Sensor,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::Sales, EventKind::Sensor];

    /// As the command line and JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Sales => "sales",
            EventKind::Sensor => "sensor",
        }
    }

    /// The fields an event of this kind has, and its key.
    pub fn shape(self) -> &'static str {
        match self {
            EventKind::Sales => "{id, ts, store_id, amount_usd, channel}, keyed by store_id",
            EventKind::Sensor => "{id, sensor_id, val, unit, status, ts}, keyed by sensor_id",
        }
    }

    /// The table events of this kind land in.
    pub fn table(self) -> &'static str {
        match self {
            EventKind::Sales => "sales_events",
            EventKind::Sensor => "sensor_logs",
        }
    }

    /// The table `consume --upsert` keeps one row per record key in.
    pub fn latest_table(self) -> &'static str {
        match self {
            EventKind::Sales => "sales_latest",
            EventKind::Sensor => "sensor_latest",
        }
    }

    /// The field used as the Kafka record key.
    pub fn key_column(self) -> &'static str {
        match self {
            EventKind::Sales => "store_id",
            EventKind::Sensor => "sensor_id",
        }
    }

    /// The column with a closed set of values (what `check` breaks the rows down by), and the set.
    pub fn category(self) -> (&'static str, &'static [&'static str]) {
        match self {
            EventKind::Sales => ("channel", &CHANNELS),
            EventKind::Sensor => ("status", &STATUSES),
        }
    }
}

pub const CHANNELS: [&str; 3] = ["online", "store", "mobile"];
pub const STATUSES: [&str; 3] = ["ok", "warn", "fail"];

/// An event's text field. Kept inline up to 24 bytes — every store, sensor, channel, unit and
/// status the generator makes, and most that arrive — so decoding an event allocates nothing
/// for them (two to three allocations an event with `String`, issue #30).
pub type Text = compact_str::CompactString;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sale {
    pub id: Uuid,
    #[serde(with = "ts_millis")]
    pub ts: OffsetDateTime,
    pub store_id: Text,
    pub amount_usd: f64,
    pub channel: Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorReading {
    pub id: Uuid,
    pub sensor_id: Text,
    pub val: f64,
    pub unit: Text,
    pub status: Text,
    #[serde(with = "ts_millis")]
    pub ts: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Sale(Sale),
    Sensor(SensorReading),
}

impl Event {
    pub fn id(&self) -> Uuid {
        match self {
            Event::Sale(s) => s.id,
            Event::Sensor(r) => r.id,
        }
    }

    pub fn ts(&self) -> OffsetDateTime {
        match self {
            Event::Sale(s) => s.ts,
            Event::Sensor(r) => r.ts,
        }
    }

    /// The Kafka record key: events of one store / sensor stay in one partition, in order.
    pub fn key(&self) -> &str {
        match self {
            Event::Sale(s) => &s.store_id,
            Event::Sensor(r) => &r.sensor_id,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Sized for a typical event, so encoding does not reallocate.
        let mut out = Vec::with_capacity(192);
        let encoded = match self {
            Event::Sale(s) => serde_json::to_writer(&mut out, s),
            Event::Sensor(r) => serde_json::to_writer(&mut out, r),
        };
        encoded.expect("events contain only JSON-safe values");
        out
    }
}

/// `ts` on the wire: RFC 3339, UTC, exactly three fractional digits. Any RFC 3339 offset is
/// accepted when reading and normalised to UTC.
pub mod ts_millis {
    use serde::de::Visitor;
    use serde::{Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

    pub fn format(ts: OffsetDateTime) -> String {
        // Hand-rolled: this runs for every produced event, and `time`'s general formatter
        // was a visible share of produce's profile.
        use std::fmt::Write;
        let ts = ts.to_offset(UtcOffset::UTC);
        let (date, time) = (ts.date(), ts.time());
        let mut out = String::with_capacity(24);
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            date.year(),
            u8::from(date.month()),
            date.day(),
            time.hour(),
            time.minute(),
            time.second(),
            time.millisecond()
        );
        out
    }

    pub fn serialize<S: Serializer>(ts: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        d.deserialize_str(Text)
    }

    /// Reads `ts` from the text the deserializer holds, without copying it.
    struct Text;

    impl Visitor<'_> for Text {
        type Value = OffsetDateTime;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<OffsetDateTime, E> {
            if let Some(ts) = parse_as_formatted(text) {
                return Ok(ts);
            }
            OffsetDateTime::parse(text, &Rfc3339)
                .map(|ts| ts.to_offset(UtcOffset::UTC))
                .map_err(|e| E::custom(format!("ts '{text}' is not RFC 3339: {e}")))
        }
    }

    /// `ts` in the one form [`format`] writes (`2026-11-22T14:36:36.123Z`), read directly: the
    /// general RFC 3339 parser was a tenth of consume's instructions per event. `None` for any
    /// other text, which the general parser then reads or refuses.
    fn parse_as_formatted(text: &str) -> Option<OffsetDateTime> {
        let b = text.as_bytes();
        let separators = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
        ];
        if b.len() != 24 || b[23] != b'Z' || separators.iter().any(|&(at, c)| b[at] != c) {
            return None;
        }
        let number = |from: usize, to: usize| {
            b[from..to].iter().try_fold(0u16, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u16::from(c - b'0'))
            })
        };
        let month = Month::try_from(u8::try_from(number(5, 7)?).ok()?).ok()?;
        let date = Date::from_calendar_date(i32::from(number(0, 4)?), month, number(8, 10)? as u8);
        let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
        let time = Time::from_hms_milli(hour as u8, minute as u8, second as u8, number(20, 23)?);
        Some(PrimitiveDateTime::new(date.ok()?, time.ok()?).assume_utc())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_formatted_form_reads_as_the_general_parser_reads_it() {
            let texts = [
                "2026-11-22T14:36:36.123Z",
                "2000-01-01T00:00:00.000Z",
                "0000-01-01T00:00:00.000Z",
                "9999-12-31T23:59:59.999Z",
                "2024-02-29T12:00:00.500Z",
                "2025-02-29T12:00:00.500Z",
                "2026-13-01T00:00:00.000Z",
                "2026-00-01T00:00:00.000Z",
                "2026-04-31T00:00:00.000Z",
                "2026-01-01T24:00:00.000Z",
                "2026-01-01T23:60:00.000Z",
                "2016-12-31T23:59:60.000Z",
                "2026-01-01T00:00:00.00+Z",
                "2026-01-01t00:00:00.000Z",
                "2026-01-01T00:00:00.000z",
                "2026-01-01T00:00:00,000Z",
                "2026-01-01T00:00:00.1234Z",
                "2026-01-01T00:00:00.000+02:00",
                "+026-01-01T00:00:00.000Z",
            ];
            for text in texts {
                let general = OffsetDateTime::parse(text, &Rfc3339)
                    .ok()
                    .map(|ts| ts.to_offset(UtcOffset::UTC));
                if let Some(direct) = parse_as_formatted(text) {
                    assert_eq!(Some(direct), general, "{text}");
                }
            }
            assert!(parse_as_formatted("2026-11-22T14:36:36.123Z").is_some());
            let ts = OffsetDateTime::from_unix_timestamp_nanos(1_790_000_000_123_000_000).unwrap();
            assert_eq!(parse_as_formatted(&format(ts)), Some(ts));
        }
    }
}

/// Truncate to whole milliseconds: the precision of `ts` and of Kafka record timestamps.
pub fn to_millis(ts: OffsetDateTime) -> OffsetDateTime {
    let ns = ts.unix_timestamp_nanos();
    OffsetDateTime::from_unix_timestamp_nanos(ns - ns.rem_euclid(1_000_000))
        .expect("truncation stays in range")
}

// ---------------------------------------------------------------------------------------------
// Decoding: everything a hostile or careless producer can send gets a reason, never a panic.
// ---------------------------------------------------------------------------------------------

/// Longest accepted text field (store, sensor, channel, unit, status).
const MAX_TEXT: usize = 128;
/// `numeric(12,2)` holds up to 10 integer digits.
const MAX_AMOUNT: f64 = 9_999_999_999.99;

/// Why a record cannot be stored: the reason its dead letter carries, one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<&str> for Invalid {
    fn from(reason: &str) -> Self {
        Self(reason.to_string())
    }
}

/// The reason as the dead letter stores it.
impl From<Invalid> for String {
    fn from(reason: Invalid) -> Self {
        reason.0
    }
}

/// Decode and validate one record value. `Err` is the reason it goes to the dead letters.
pub fn decode(kind: EventKind, payload: Option<&[u8]>) -> Result<Event, Invalid> {
    let bytes = payload.ok_or("record has no value (null payload)")?;
    if bytes.is_empty() {
        return Err("record value is empty".into());
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| Invalid(format!("value is not UTF-8: {e}")))?;
    let event = match kind {
        EventKind::Sales => Event::Sale(
            serde_json::from_str::<Sale>(text)
                .map_err(|e| Invalid(format!("not a sales event: {e}")))?,
        ),
        EventKind::Sensor => Event::Sensor(
            serde_json::from_str::<SensorReading>(text)
                .map_err(|e| Invalid(format!("not a sensor event: {e}")))?,
        ),
    };
    validate(&event)?;
    Ok(event)
}

/// [`decode`] a record's value as a consumer does: a value larger than `max_bytes` fails
/// unparsed.
pub fn decode_record(
    kind: EventKind,
    value: Option<&[u8]>,
    max_bytes: usize,
) -> Result<Event, Invalid> {
    match value {
        Some(v) if v.len() > max_bytes => Err(Invalid(format!(
            "record value is {} bytes, larger than --max-event-bytes {max_bytes}",
            v.len()
        ))),
        _ => decode(kind, value),
    }
}

fn text_field(name: &str, value: &str) -> Result<(), Invalid> {
    // `trim().is_empty()`, without trimming both ends first: stops at the first visible character.
    if value.chars().all(char::is_whitespace) {
        return Err(Invalid(format!("{name} is empty")));
    }
    // No more characters than bytes: only a long text needs counting.
    if value.len() > MAX_TEXT && value.chars().count() > MAX_TEXT {
        return Err(Invalid(format!(
            "{name} is longer than {MAX_TEXT} characters"
        )));
    }
    Ok(())
}

fn validate(event: &Event) -> Result<(), Invalid> {
    match event {
        Event::Sale(s) => {
            text_field("store_id", &s.store_id)?;
            text_field("channel", &s.channel)?;
            if !s.amount_usd.is_finite() || s.amount_usd.abs() > MAX_AMOUNT {
                return Err(Invalid(format!(
                    "amount_usd {} does not fit numeric(12,2)",
                    s.amount_usd
                )));
            }
        }
        Event::Sensor(r) => {
            text_field("sensor_id", &r.sensor_id)?;
            text_field("unit", &r.unit)?;
            text_field("status", &r.status)?;
            if !r.val.is_finite() || r.val.abs() > 1e15 {
                return Err(Invalid(format!("val {} is out of range", r.val)));
            }
        }
    }
    Ok(())
}

/// An amount in cents, the exact form both sinks store (`numeric(12,2)` in Postgres).
pub fn cents(amount_usd: f64) -> i64 {
    (amount_usd * 100.0).round() as i64
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

struct SensorType {
    prefix: &'static str,
    unit: &'static str,
    mean: f64,
    spread: f64,
}

const SENSOR_TYPES: [SensorType; 5] = [
    SensorType {
        prefix: "temp",
        unit: "°C",
        mean: 21.5,
        spread: 2.5,
    },
    SensorType {
        prefix: "humidity",
        unit: "%",
        mean: 45.0,
        spread: 8.0,
    },
    SensorType {
        prefix: "pressure",
        unit: "hPa",
        mean: 1013.0,
        spread: 6.0,
    },
    SensorType {
        prefix: "co2",
        unit: "ppm",
        mean: 650.0,
        spread: 120.0,
    },
    SensorType {
        prefix: "vibration",
        unit: "mm/s",
        mean: 2.8,
        spread: 0.9,
    },
];

const STORES: usize = 12;
const SENSORS_PER_TYPE: usize = 3;

/// Makes an endless, realistic stream of events. With a seed, every field but `ts` (which is
/// the sending time, and also the Kafka record timestamp retention works on) is reproducible.
pub struct Generator {
    kind: EventKind,
    rng: StdRng,
    seeded: bool,
    stores: Vec<String>,
}

impl Generator {
    pub fn new(kind: EventKind, seed: Option<u64>) -> Self {
        // The catalogue of stores is the same in every run, seeded or not, so rows from
        // different runs can be compared and grouped.
        let mut catalogue_rng = StdRng::seed_from_u64(0x5eed_0000);
        let stores = (1..=STORES)
            .map(|n| {
                let city: String = CityName().fake_with_rng(&mut catalogue_rng);
                let slug: String = city
                    .to_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                format!("{slug}-{n:02}")
            })
            .collect();
        let (rng, seeded) = match seed {
            Some(s) => (StdRng::seed_from_u64(s), true),
            None => (StdRng::from_os_rng(), false),
        };
        Self {
            kind,
            rng,
            seeded,
            stores,
        }
    }

    pub fn stores(&self) -> &[String] {
        &self.stores
    }

    /// The next event, stamped `now` (truncated to milliseconds).
    pub fn next_event(&mut self, now: OffsetDateTime) -> Event {
        let ts = to_millis(now);
        let id = self.next_id(ts);
        match self.kind {
            EventKind::Sales => {
                let store_id =
                    Text::from(self.stores[self.rng.random_range(0..self.stores.len())].as_str());
                // Log-normal: most baskets are small, a few are large (median ≈ $24).
                let amount = (24.0f64.ln() + 0.85 * self.standard_normal()).exp();
                let amount_usd = (amount.clamp(0.5, 5000.0) * 100.0).round() / 100.0;
                let channel = match self.rng.random_range(0..100) {
                    0..45 => "online",
                    45..85 => "store",
                    _ => "mobile",
                };
                Event::Sale(Sale {
                    id,
                    ts,
                    store_id,
                    amount_usd,
                    channel: channel.into(),
                })
            }
            EventKind::Sensor => {
                let kind = &SENSOR_TYPES[self.rng.random_range(0..SENSOR_TYPES.len())];
                let n = self.rng.random_range(1..=SENSORS_PER_TYPE);
                self.reading(id, ts, kind, format_compact!("{}-{n:02}", kind.prefix))
            }
        }
    }

    /// The next keyed update (`produce --keys N`): the key `store-<k>` / `sensor-<k>` of a k
    /// drawn uniformly from 0..`keys` (so each key is updated again and again), and its new
    /// value — the event's store or sensor is the key — or, with probability `tombstones`
    /// (0..=1), none: a tombstone, which deletes the key. Sensor k is always of one type.
    pub fn next_update(
        &mut self,
        keys: u64,
        tombstones: f64,
        now: OffsetDateTime,
    ) -> (String, Option<Event>) {
        let k = self.rng.random_range(0..keys.max(1));
        let key = match self.kind {
            EventKind::Sales => format!("store-{k}"),
            EventKind::Sensor => format!("sensor-{k}"),
        };
        if self.rng.random_bool(tombstones.clamp(0.0, 1.0)) {
            return (key, None);
        }
        let event = match self.next_event(now) {
            Event::Sale(sale) => Event::Sale(Sale {
                store_id: key.as_str().into(),
                ..sale
            }),
            Event::Sensor(reading) => {
                let kind = &SENSOR_TYPES[(k % SENSOR_TYPES.len() as u64) as usize];
                self.reading(reading.id, reading.ts, kind, key.as_str().into())
            }
        };
        (key, Some(event))
    }

    /// A reading of `sensor_id`, a sensor of type `kind`.
    fn reading(
        &mut self,
        id: Uuid,
        ts: OffsetDateTime,
        kind: &SensorType,
        sensor_id: Text,
    ) -> Event {
        let deviation = self.standard_normal();
        let val = ((kind.mean + kind.spread * deviation) * 100.0).round() / 100.0;
        // Readings far from normal raise a warning; a small share of sensors fail.
        let status = if self.rng.random_range(0..1000) < 15 {
            "fail"
        } else if deviation.abs() > 2.0 {
            "warn"
        } else {
            "ok"
        };
        Event::Sensor(SensorReading {
            id,
            sensor_id,
            val,
            unit: kind.unit.into(),
            status: status.into(),
            ts,
        })
    }

    fn next_id(&mut self, ts: OffsetDateTime) -> Uuid {
        let bytes: [u8; 16] = self.rng.random();
        if self.seeded {
            // Reproducible ids cannot carry the sending time, so they are random (v4) ids
            // drawn from the seeded generator.
            uuid::Builder::from_random_bytes(bytes).into_uuid()
        } else {
            // Time-ordered v7 ids keep the primary-key index append-mostly.
            let ms = (ts.unix_timestamp_nanos() / 1_000_000) as u64;
            let mut tail = [0u8; 10];
            tail.copy_from_slice(&bytes[..10]);
            uuid::Builder::from_unix_timestamp_millis(ms, &tail).into_uuid()
        }
    }

    /// Box–Muller: a standard normal deviate from two uniforms.
    fn standard_normal(&mut self) -> f64 {
        let u1: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn generated_events_round_trip_through_the_decoder() {
        for kind in [EventKind::Sales, EventKind::Sensor] {
            let mut g = Generator::new(kind, None);
            for _ in 0..1000 {
                let e = g.next_event(now());
                let back = decode(kind, Some(&e.to_json())).unwrap();
                assert_eq!(back, e);
            }
        }
    }

    #[test]
    fn a_seed_reproduces_the_stream() {
        let mut a = Generator::new(EventKind::Sales, Some(7));
        let mut b = Generator::new(EventKind::Sales, Some(7));
        let t = now();
        for _ in 0..100 {
            assert_eq!(a.next_event(t), b.next_event(t));
        }
        let mut c = Generator::new(EventKind::Sales, Some(8));
        assert_ne!(a.next_event(t).id(), c.next_event(t).id());
    }

    #[test]
    fn keyed_updates_cover_the_key_space_with_tombstones_at_the_rate_asked() {
        for kind in EventKind::ALL {
            let mut g = Generator::new(kind, Some(3));
            let mut again = Generator::new(kind, Some(3));
            let (mut keys, mut tombstones) = (std::collections::BTreeSet::new(), 0);
            for _ in 0..20_000 {
                let (key, value) = g.next_update(50, 0.05, now());
                let (same_key, same_value) = again.next_update(50, 0.05, now());
                assert_eq!(key, same_key, "a seed reproduces the keys");
                assert_eq!(
                    value.as_ref().map(Event::id),
                    same_value.as_ref().map(Event::id)
                );
                match value {
                    None => tombstones += 1,
                    Some(event) => assert_eq!(event.key(), key),
                }
                keys.insert(key);
            }
            assert_eq!(keys.len(), 50);
            assert!(
                (800..1200).contains(&tombstones),
                "{tombstones} tombstones of 20000"
            );
        }
    }

    #[test]
    fn ts_has_milliseconds_and_z() {
        let mut g = Generator::new(EventKind::Sensor, None);
        let json: serde_json::Value =
            serde_json::from_slice(&g.next_event(now()).to_json()).unwrap();
        let ts = json["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-22T14:36:36.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn values_are_plausible() {
        let mut g = Generator::new(EventKind::Sales, Some(1));
        let sales: Vec<Sale> = (0..5000)
            .map(|_| match g.next_event(now()) {
                Event::Sale(s) => s,
                _ => unreachable!(),
            })
            .collect();
        assert!(sales
            .iter()
            .all(|s| s.amount_usd > 0.0 && s.amount_usd <= 5000.0));
        assert!(sales
            .iter()
            .all(|s| (s.amount_usd * 100.0 - (s.amount_usd * 100.0).round()).abs() < 1e-6));
        assert!(sales.iter().all(|s| CHANNELS.contains(&s.channel.as_str())));
        let mut amounts: Vec<f64> = sales.iter().map(|s| s.amount_usd).collect();
        amounts.sort_by(f64::total_cmp);
        let median = amounts[amounts.len() / 2];
        let mean = amounts.iter().sum::<f64>() / amounts.len() as f64;
        assert!(mean > median, "right-skewed: mean {mean} > median {median}");
        let stores: std::collections::BTreeSet<_> = sales.iter().map(|s| &s.store_id).collect();
        assert_eq!(stores.len(), STORES);
    }

    #[test]
    fn hostile_payloads_get_a_reason() {
        let cases: [Option<&[u8]>; 9] = [
            None,
            Some(b""),
            Some(b"\xff\xfe"),
            Some(b"not json"),
            Some(b"[1,2,3]"),
            Some(br#"{"id":"x","ts":"2026-01-01T00:00:00Z","store_id":"s","amount_usd":1,"channel":"online"}"#),
            Some(br#"{"id":"0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e10","ts":"yesterday","store_id":"s","amount_usd":1,"channel":"online"}"#),
            Some(br#"{"id":"0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e10","ts":"2026-01-01T00:00:00Z","store_id":"s","amount_usd":"12","channel":"online"}"#),
            Some(br#"{"id":"0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e10","ts":"2026-01-01T00:00:00Z","store_id":"s","amount_usd":1e300,"channel":"online"}"#),
        ];
        for payload in cases {
            let reason = decode(EventKind::Sales, payload).unwrap_err();
            assert!(!reason.0.is_empty());
        }
        let sensor = Generator::new(EventKind::Sensor, None)
            .next_event(now())
            .to_json();
        assert!(decode(EventKind::Sales, Some(&sensor))
            .unwrap_err()
            .0
            .contains("not a sales event"));
    }

    #[test]
    fn a_blank_text_is_empty_and_one_with_anything_visible_is_not() {
        let sale = |store: &str| {
            let value = serde_json::json!({
                "id": "0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e10",
                "ts": "2026-01-01T00:00:00.000Z",
                "store_id": store,
                "amount_usd": 1.5,
                "channel": "online",
            });
            decode(EventKind::Sales, Some(value.to_string().as_bytes()))
        };
        for blank in ["", " ", "\t\n ", "\u{a0}\u{3000}"] {
            let reason = sale(blank).unwrap_err().0;
            assert_eq!(reason, "store_id is empty", "{blank:?}");
        }
        for visible in ["s", " s ", "\u{a0}x", "a b"] {
            assert!(sale(visible).is_ok(), "{visible:?}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: whatever arrives, the decoder answers with an event or a reason.
    use proptest::prelude::*;

    use super::*;

    fn any_json_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,40}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::from("2026-11-22T14:36:36.123Z")),
            Just(serde_json::Value::from(
                "0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e10"
            )),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for kind in [EventKind::Sales, EventKind::Sensor] {
                if let Err(reason) = decode(kind, Some(&bytes)) {
                    prop_assert!(!reason.0.is_empty());
                }
            }
        }

        #[test]
        fn events_of_the_right_shape_with_any_field_values(
            values in proptest::collection::vec(any_json_value(), 8),
        ) {
            let keys = ["id", "ts", "store_id", "amount_usd", "channel", "sensor_id", "val", "unit"];
            let mut object = serde_json::Map::new();
            for (k, v) in keys.iter().zip(values) {
                object.insert((*k).to_string(), v);
            }
            object.insert("status".into(), "ok".into());
            let bytes = serde_json::to_vec(&object).unwrap();
            for kind in [EventKind::Sales, EventKind::Sensor] {
                match decode(kind, Some(&bytes)) {
                    Ok(event) => {
                        // Whatever is accepted survives the round trip and fits the schema.
                        prop_assert_eq!(decode(kind, Some(&event.to_json())).unwrap(), event);
                    }
                    Err(reason) => prop_assert!(!reason.0.is_empty()),
                }
            }
        }
    }
}

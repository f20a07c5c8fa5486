//! The IRIS segment payload: the intake's event shape, its validation, and the exact JSON IRIS
//! sends (field names, numbers as strings, `User_count`, the `Wed Jul 27 16:17:22 UTC 2016`
//! date format); plus the strict parser the mock partner uses to check what it receives.
//!
//! Each accepted event is rendered once, at intake, into the bytes of its `Users` entry
//! ([`UserRecord`]). A publish request is then the fixed header, the records joined by commas,
//! and `]}`: no intermediate JSON tree, exact byte accounting for `max_bytes`, and nothing to
//! re-validate later. Everything here is pure.

use std::borrow::Cow;

use bytes::Bytes;
use jiff::Timestamp;
use serde::Deserialize;

/// strftime format of IRIS dates (`ProcessTime`, `DateTime`).
pub const IRIS_DATE_FORMAT: &str = "%a %b %d %H:%M:%S UTC %Y";

/// Limits on one event, so one producer line cannot make a huge record.
pub const MAX_SEGMENTS_PER_EVENT: usize = 10_000;
const MAX_ID_DIGITS: usize = 64;
const MAX_PARTNER_UUID: usize = 256;

/// One line of `POST /v1/events`: one user's segment changes for one destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeEvent<'a> {
    /// Required at the intake; optional in batch files (the batch names its destination).
    #[serde(borrow, default)]
    pub destination: Cow<'a, str>,
    /// Audience Manager's user id (digits).
    #[serde(borrow)]
    pub aam_uuid: Cow<'a, str>,
    /// The partner's id for the user (its device or cookie id).
    #[serde(borrow, default)]
    pub data_partner_uuid: Cow<'a, str>,
    #[serde(borrow)]
    pub segments: Vec<IntakeSegment<'a>>,
}

/// One segment change of an [`IntakeEvent`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeSegment<'a> {
    #[serde(borrow)]
    pub segment_id: Cow<'a, str>,
    /// `"1"` qualified (realised), `"0"` disqualified (removed).
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    /// RFC 3339 time of the change; the intake time when absent.
    #[serde(borrow, default)]
    pub time: Option<Cow<'a, str>>,
}

/// A field of an event that is not acceptable, named as the producer wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// One user's `Users` entry, rendered to JSON bytes, with its spool identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The event's id in the spool (0 until spooled).
    pub id: u64,
    /// When the intake accepted it, in milliseconds since the Unix epoch (0 until spooled).
    pub accepted_at_ms: i64,
    /// `{"AAM_UUID":...,"DataPartner_UUID":...,"Segments":[...]}`
    pub json: Bytes,
}

impl UserRecord {
    /// A record not yet spooled.
    pub fn new(json: Bytes) -> Self {
        Self {
            id: 0,
            accepted_at_ms: 0,
            json,
        }
    }
}

fn is_digits(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
}

const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats a time as IRIS does: `Wed Jul 27 16:17:22 UTC 2016`.
pub fn iris_date(ts: Timestamp) -> String {
    let mut out = Vec::with_capacity(28);
    write_iris_date(ts, &mut out);
    String::from_utf8(out).expect("ASCII")
}

/// Appends [`iris_date`] to `out`. This runs for every segment at the intake, so the common
/// case (years 1000–9999) is written directly, not through a strftime interpreter; the
/// result is the same as `strftime(IRIS_DATE_FORMAT)` (tested).
pub fn write_iris_date(ts: Timestamp, out: &mut Vec<u8>) {
    write_iris_datetime(jiff::tz::Offset::UTC.to_datetime(ts), out);
}

/// [`write_iris_date`] of a UTC civil time.
fn write_iris_datetime(dt: jiff::civil::DateTime, out: &mut Vec<u8>) {
    if !(1000..=9999).contains(&dt.year()) {
        out.extend_from_slice(dt.strftime(IRIS_DATE_FORMAT).to_string().as_bytes());
        return;
    }
    let two = |out: &mut Vec<u8>, v: i8| {
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    out.extend_from_slice(WEEKDAYS[dt.weekday().to_monday_zero_offset() as usize].as_bytes());
    out.push(b' ');
    out.extend_from_slice(MONTHS[dt.month() as usize - 1].as_bytes());
    out.push(b' ');
    two(out, dt.day());
    out.push(b' ');
    two(out, dt.hour());
    out.push(b':');
    two(out, dt.minute());
    out.push(b':');
    two(out, dt.second());
    out.extend_from_slice(b" UTC ");
    let y = dt.year();
    two(out, (y / 100) as i8);
    two(out, (y % 100) as i8);
}

/// A fixed-width run of ASCII digits (at most 4) as a number; `None` if a byte is not a digit.
fn digits(d: &[u8]) -> Option<i16> {
    d.iter().try_fold(0i16, |a, c| {
        c.is_ascii_digit().then(|| a * 10 + (c - b'0') as i16)
    })
}

/// An intake time as a UTC civil time: the common `YYYY-MM-DDTHH:MM:SSZ` read directly, every
/// other form through jiff's full RFC 3339 parser (same result, tested).
fn intake_time(s: &str) -> Result<jiff::civil::DateTime, jiff::Error> {
    match fast_utc_time(s) {
        Some(dt) => Ok(dt),
        None => s
            .parse::<Timestamp>()
            .map(|ts| jiff::tz::Offset::UTC.to_datetime(ts)),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds, years 1000–9999); `None` for every other form.
fn fast_utc_time(s: &str) -> Option<jiff::civil::DateTime> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits(&b[r]);
    let (year, second) = (num(0..4)?, num(17..19)?);
    // Leap seconds (jiff clamps :60) and years before 1000 take the general path.
    if year < 1000 || second > 59 {
        return None;
    }
    jiff::civil::DateTime::new(
        year,
        num(5..7)? as i8,
        num(8..10)? as i8,
        num(11..13)? as i8,
        num(14..16)? as i8,
        second as i8,
        0,
    )
    .ok()
}

/// Parses an IRIS date strictly: exactly `Www Mmm dd HH:MM:SS UTC YYYY`, a real date and
/// time, and the weekday must match the date.
pub fn parse_iris_date(s: &str) -> Result<Timestamp, String> {
    let bad = || format!("{s:?} is not a date like \"Wed Jul 27 16:17:22 UTC 2016\"");
    let b = s.as_bytes();
    if b.len() != 28
        || b[3] != b' '
        || b[7] != b' '
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
        || &b[19..24] != b" UTC "
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| digits(&b[r]).ok_or_else(bad);
    let weekday = WEEKDAYS
        .iter()
        .position(|w| w.as_bytes() == &b[0..3])
        .ok_or_else(bad)?;
    let month = MONTHS
        .iter()
        .position(|m| m.as_bytes() == &b[4..7])
        .ok_or_else(bad)? as i8
        + 1;
    let dt = jiff::civil::DateTime::new(
        num(24..28)?,
        month,
        num(8..10)? as i8,
        num(11..13)? as i8,
        num(14..16)? as i8,
        num(17..19)? as i8,
        0,
    )
    .map_err(|e| format!("{}: {e}", bad()))?;
    if dt.weekday().to_monday_zero_offset() as usize != weekday {
        return Err(format!("{}: the weekday does not match the date", bad()));
    }
    jiff::tz::Offset::UTC
        .to_timestamp(dt)
        .map_err(|e| format!("{}: {e}", bad()))
}

/// Checks a user's ids (the same rules for intake events and batch rows).
pub fn check_user_ids(aam_uuid: &str, data_partner_uuid: &str) -> Result<(), FieldError> {
    if !is_digits(aam_uuid, MAX_ID_DIGITS) {
        return Err(field_err(
            "aam_uuid",
            format!("must be 1 to {MAX_ID_DIGITS} decimal digits"),
        ));
    }
    if data_partner_uuid.len() > MAX_PARTNER_UUID {
        return Err(field_err(
            "data_partner_uuid",
            format!("longer than {MAX_PARTNER_UUID} bytes"),
        ));
    }
    Ok(())
}

/// Validates one segment change and appends its JSON object to `out`. `index` is the
/// segment's position in an event's `segments` (named in errors as `segments[i].field`);
/// `now` stands in for an absent time.
pub fn render_segment(
    segment_id: &str,
    status: &str,
    time: Option<&str>,
    now: Timestamp,
    index: Option<usize>,
    out: &mut Vec<u8>,
) -> Result<(), FieldError> {
    // Only formatted on the error path: this runs for every segment at intake.
    let field = |name: &str| match index {
        Some(i) => format!("segments[{i}].{name}"),
        None => name.to_string(),
    };
    if !is_digits(segment_id, 20) {
        return Err(field_err(
            field("segment_id"),
            "must be 1 to 20 decimal digits",
        ));
    }
    if status != "0" && status != "1" {
        return Err(field_err(
            field("status"),
            "must be \"1\" (qualified) or \"0\" (disqualified)",
        ));
    }
    let when = match time {
        Some(t) => intake_time(t).map_err(|e| {
            field_err(
                field("time"),
                format!("not an RFC 3339 time like 2016-07-27T16:17:22Z: {e}"),
            )
        })?,
        None => jiff::tz::Offset::UTC.to_datetime(now),
    };
    out.extend_from_slice(b"{\"Segment_ID\":\"");
    out.extend_from_slice(segment_id.as_bytes());
    out.extend_from_slice(b"\",\"Status\":\"");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\",\"DateTime\":\"");
    write_iris_datetime(when, out);
    out.extend_from_slice(b"\"}");
    Ok(())
}

/// A `Users` entry from its ids and already rendered, comma-separated segment objects.
pub fn render_user_entry(
    aam_uuid: &str,
    data_partner_uuid: &str,
    segments_json: &[u8],
) -> UserRecord {
    let mut out = Vec::with_capacity(64 + data_partner_uuid.len() + segments_json.len());
    write_user_head(&mut out, aam_uuid, data_partner_uuid);
    out.extend_from_slice(segments_json);
    out.extend_from_slice(b"]}");
    UserRecord::new(Bytes::from(out))
}

/// `{"AAM_UUID":"…","DataPartner_UUID":"…","Segments":[` — a `Users` entry up to its segments.
fn write_user_head(out: &mut Vec<u8>, aam_uuid: &str, data_partner_uuid: &str) {
    out.extend_from_slice(b"{\"AAM_UUID\":\"");
    out.extend_from_slice(aam_uuid.as_bytes());
    out.extend_from_slice(b"\",\"DataPartner_UUID\":");
    write_json_str(out, data_partner_uuid);
    out.extend_from_slice(b",\"Segments\":[");
}

/// Validates an intake event and renders its `Users` entry. `now` stands in for absent times.
pub fn render_user(ev: &IntakeEvent<'_>, now: Timestamp) -> Result<UserRecord, FieldError> {
    let mut out = Vec::with_capacity(64 + ev.data_partner_uuid.len() + ev.segments.len() * 80);
    render_user_into(ev, now, &mut out)?;
    Ok(UserRecord::new(Bytes::from(out)))
}

/// [`render_user`] appended to `out` (on error, `out` may hold part of it).
pub fn render_user_into(
    ev: &IntakeEvent<'_>,
    now: Timestamp,
    out: &mut Vec<u8>,
) -> Result<(), FieldError> {
    check_user_ids(&ev.aam_uuid, &ev.data_partner_uuid)?;
    if ev.segments.is_empty() {
        return Err(field_err("segments", "must list at least one segment"));
    }
    if ev.segments.len() > MAX_SEGMENTS_PER_EVENT {
        return Err(field_err(
            "segments",
            format!("more than {MAX_SEGMENTS_PER_EVENT} segments"),
        ));
    }
    // Rendered in one buffer: the ids, then each segment as it is validated.
    write_user_head(out, &ev.aam_uuid, &ev.data_partner_uuid);
    for (i, seg) in ev.segments.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        render_segment(
            &seg.segment_id,
            &seg.status,
            seg.time.as_deref(),
            now,
            Some(i),
            out,
        )?;
    }
    out.extend_from_slice(b"]}");
    Ok(())
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is the reference; writing into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
}

/// The destination-level fields of a payload.
#[derive(Debug, Clone)]
pub struct PayloadHeader {
    pub user_dpid: String,
    pub client_id: String,
    pub destination_id: String,
}

/// Bytes a payload adds around its users (header with the longest date and a large count).
pub const PAYLOAD_OVERHEAD: usize = 160;

impl PayloadHeader {
    /// Upper bound of the payload size for users whose records total `users_bytes`.
    pub fn payload_size(&self, users: usize, users_bytes: usize) -> usize {
        PAYLOAD_OVERHEAD
            + self.user_dpid.len()
            + self.client_id.len()
            + self.destination_id.len()
            + users_bytes
            + users.saturating_sub(1)
    }

    /// Writes the complete payload JSON into `out`.
    pub fn write_payload(&self, process_time: Timestamp, users: &[UserRecord], out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ProcessTime\":\"");
        out.extend_from_slice(iris_date(process_time).as_bytes());
        out.extend_from_slice(b"\",\"User_DPID\":\"");
        out.extend_from_slice(self.user_dpid.as_bytes());
        out.extend_from_slice(b"\",\"Client_ID\":\"");
        out.extend_from_slice(self.client_id.as_bytes());
        out.extend_from_slice(b"\",\"AAM_Destination_Id\":\"");
        out.extend_from_slice(self.destination_id.as_bytes());
        out.extend_from_slice(b"\",\"User_count\":\"");
        out.extend_from_slice(users.len().to_string().as_bytes());
        out.extend_from_slice(b"\",\"Users\":[");
        for (i, u) in users.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&u.json);
        }
        out.extend_from_slice(b"]}");
    }
}

// ---------------------------------------------------------------------------------------------
// Strict parsing, as a partner (the mock) receives the payload.
// ---------------------------------------------------------------------------------------------

/// A received payload, parsed without leniency: exact field names, no extra fields, every
/// value a string.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    #[serde(rename = "ProcessTime")]
    pub process_time: String,
    #[serde(rename = "User_DPID")]
    pub user_dpid: String,
    #[serde(rename = "Client_ID")]
    pub client_id: String,
    #[serde(rename = "AAM_Destination_Id")]
    pub destination_id: String,
    #[serde(rename = "User_count")]
    pub user_count: String,
    #[serde(rename = "Users")]
    pub users: Vec<User>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    #[serde(rename = "AAM_UUID")]
    pub aam_uuid: String,
    #[serde(rename = "DataPartner_UUID")]
    pub data_partner_uuid: String,
    #[serde(rename = "Segments")]
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    #[serde(rename = "Segment_ID")]
    pub segment_id: String,
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "DateTime")]
    pub date_time: String,
}

/// Why a received payload is not a valid IRIS payload. `reason` is a short stable label for
/// counting; `detail` says exactly what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct PayloadError {
    pub reason: &'static str,
    pub detail: String,
}

fn perr(reason: &'static str, detail: impl Into<String>) -> PayloadError {
    PayloadError {
        reason,
        detail: detail.into(),
    }
}

impl User {
    /// A 64-bit digest of everything the user entry carries (ids, and each segment's id,
    /// status and time, in order). Summed (wrapping) over a set of users it gives an
    /// order-independent fingerprint of the set: `irisd bench` checks the mock received
    /// exactly the users it sent.
    pub fn digest(&self) -> u64 {
        user_digest(
            &self.aam_uuid,
            &self.data_partner_uuid,
            self.segments.iter().map(|s| {
                (
                    s.segment_id.as_str(),
                    s.status.as_str(),
                    s.date_time.as_str(),
                )
            }),
        )
    }
}

/// See [`User::digest`]; `segments` are (id, status, IRIS `DateTime`).
pub fn user_digest<'a>(
    aam_uuid: &str,
    data_partner_uuid: &str,
    segments: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
) -> u64 {
    // FNV-1a over the fields, 0xff (never in UTF-8) between them, then a mixing finalizer so
    // sums of digests do not cancel out.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut field = |s: &str| {
        for &b in s.as_bytes().iter().chain(std::iter::once(&0xff)) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    field(aam_uuid);
    field(data_partner_uuid);
    for (id, status, time) in segments {
        field(id);
        field(status);
        field(time);
    }
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Parses and checks a payload: field names and types, digit strings, `User_count` equals the
/// number of users, at most `max_users` users, `Status` 0 or 1, dates in the IRIS format.
pub fn parse_payload(body: &[u8], max_users: usize) -> Result<Payload, PayloadError> {
    let p: Payload =
        serde_json::from_slice(body).map_err(|e| perr("invalid_json", e.to_string()))?;
    for (name, v) in [
        ("User_DPID", &p.user_dpid),
        ("Client_ID", &p.client_id),
        ("AAM_Destination_Id", &p.destination_id),
        ("User_count", &p.user_count),
    ] {
        if !is_digits(v, 20) {
            return Err(perr(
                "invalid_field",
                format!("{name} {v:?} is not a digit string"),
            ));
        }
    }
    parse_iris_date(&p.process_time).map_err(|e| {
        perr(
            "invalid_date",
            format!("ProcessTime {:?}: {e}", p.process_time),
        )
    })?;
    let count: usize = p.user_count.parse().unwrap_or(usize::MAX);
    if count != p.users.len() {
        return Err(perr(
            "user_count_mismatch",
            format!(
                "User_count is {} but Users has {} entries",
                p.user_count,
                p.users.len()
            ),
        ));
    }
    if p.users.is_empty() {
        return Err(perr("no_users", "Users is empty"));
    }
    if p.users.len() > max_users {
        return Err(perr(
            "too_many_users",
            format!(
                "{} users in one request, at most {max_users} accepted",
                p.users.len()
            ),
        ));
    }
    for (i, u) in p.users.iter().enumerate() {
        if !is_digits(&u.aam_uuid, MAX_ID_DIGITS) {
            return Err(perr(
                "invalid_field",
                format!("Users[{i}].AAM_UUID is not a digit string"),
            ));
        }
        if u.segments.is_empty() {
            return Err(perr(
                "invalid_field",
                format!("Users[{i}].Segments is empty"),
            ));
        }
        for (j, s) in u.segments.iter().enumerate() {
            if !is_digits(&s.segment_id, 20) {
                return Err(perr(
                    "invalid_field",
                    format!("Users[{i}].Segments[{j}].Segment_ID is not a digit string"),
                ));
            }
            if s.status != "0" && s.status != "1" {
                return Err(perr(
                    "invalid_field",
                    format!(
                        "Users[{i}].Segments[{j}].Status {:?} is not \"0\" or \"1\"",
                        s.status
                    ),
                ));
            }
            parse_iris_date(&s.date_time).map_err(|e| {
                perr(
                    "invalid_date",
                    format!("Users[{i}].Segments[{j}].DateTime {:?}: {e}", s.date_time),
                )
            })?;
        }
    }
    Ok(p)
}

/// Audience Manager's global data sources, the device-ID types `User_DPID` can name (Adobe,
/// "Global Data Sources"). Any other DPID is a partner's own data source (web IDs).
const GLOBAL_DATA_SOURCES: [(u64, &str); 8] = [
    (20914, "Google Advertising ID (GAID)"),
    (20915, "Apple ID for Advertising (IDFA)"),
    (121963, "Roku ID for Advertising (RIDA)"),
    (389146, "Microsoft Advertising ID (MAID)"),
    (488258, "Amazon Fire TV advertising ID"),
    (963906, "Samsung Tizen ID for Advertising (TIFA)"),
    (1171485, "LG webOS TV ID (LGUDID)"),
    (1171489, "Vizio ID for Advertising (IFA)"),
];

/// What a `User_DPID` means: a documented device-ID type, or a partner-specific data source.
pub fn device_id_type(dpid: &str) -> &'static str {
    dpid.parse::<u64>()
        .ok()
        .and_then(|n| GLOBAL_DATA_SOURCES.iter().find(|(id, _)| *id == n))
        .map_or("partner-specific (web IDs)", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str) -> IntakeEvent<'_> {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn iris_dates_round_trip() {
        let ts: Timestamp = "2016-07-27T16:17:22Z".parse().unwrap();
        assert_eq!(iris_date(ts), "Wed Jul 27 16:17:22 UTC 2016");
        assert_eq!(parse_iris_date("Wed Jul 27 16:17:22 UTC 2016").unwrap(), ts);
        assert_eq!(
            iris_date("2021-03-05T01:02:03Z".parse().unwrap()),
            "Fri Mar 05 01:02:03 UTC 2021"
        );
        assert!(
            parse_iris_date("Thu Jul 27 16:17:22 UTC 2016").is_err(),
            "weekday must match"
        );
        assert!(parse_iris_date("2016-07-27T16:17:22Z").is_err());
        for bad in [
            "Wed Jul 27 16:17:22 GMT 2016",
            "Wed Jul 27 16:17:22 UTC 16",
            "Wed Jul 32 16:17:22 UTC 2016",
            "Wed Jul 27 24:17:22 UTC 2016",
            "Wed Jul 27 16:17:2x UTC 2016",
            "wed Jul 27 16:17:22 UTC 2016",
            "Wed Jul 27 16:17:22 UTC 2016 ",
        ] {
            assert!(parse_iris_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_digest_changes_with_every_field_and_segment_order() {
        let seg = |id: &str, st: &str, t: &str| Segment {
            segment_id: id.into(),
            status: st.into(),
            date_time: t.into(),
        };
        let base = User {
            aam_uuid: "1".into(),
            data_partner_uuid: "a".into(),
            segments: vec![seg("10", "1", "T"), seg("11", "0", "T")],
        };
        let mut variants = vec![base.clone()];
        let mut v = base.clone();
        v.aam_uuid = "2".into();
        variants.push(v);
        let mut v = base.clone();
        v.data_partner_uuid = "b".into();
        variants.push(v);
        let mut v = base.clone();
        v.segments[1].status = "1".into();
        variants.push(v);
        let mut v = base.clone();
        v.segments[0].date_time = "U".into();
        variants.push(v);
        let mut v = base.clone();
        v.segments.reverse();
        variants.push(v);
        let mut v = base.clone();
        v.segments.pop();
        variants.push(v);
        // Field boundaries count: "1"+"a" is not "1a"+"".
        let mut v = base.clone();
        v.aam_uuid = "1a".into();
        v.data_partner_uuid = String::new();
        variants.push(v);
        let digests: std::collections::HashSet<u64> = variants.iter().map(User::digest).collect();
        assert_eq!(digests.len(), variants.len());
        assert_eq!(base.digest(), base.clone().digest());
    }

    #[test]
    fn fast_iris_dates_equal_strftime_and_strptime() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            // Years 1000–9999 take the fast path; the rest the strftime fallback.
            let secs = rng.i64(-62_000_000_000..253_402_300_799);
            let ts = Timestamp::from_second(secs).unwrap();
            let reference = ts.strftime(IRIS_DATE_FORMAT).to_string();
            assert_eq!(iris_date(ts), reference);
            if reference.len() == 28 {
                assert_eq!(parse_iris_date(&reference).unwrap(), ts, "{reference}");
                let tm = jiff::fmt::strtime::parse(IRIS_DATE_FORMAT, &reference).unwrap();
                assert_eq!(
                    tm.to_datetime().unwrap(),
                    jiff::tz::Offset::UTC.to_datetime(ts)
                );
            }
        }
    }

    #[test]
    fn fast_intake_times_equal_jiffs_rfc3339_parse() {
        let mut rng = fastrand::Rng::with_seed(4);
        let render = |t: &str| {
            let mut out = Vec::new();
            let r = render_segment("1", "1", Some(t), Timestamp::UNIX_EPOCH, None, &mut out);
            r.map(|()| String::from_utf8(out).unwrap())
        };
        let reference = |t: &str| {
            t.parse::<Timestamp>().map(|ts| {
                format!(
                    "{{\"Segment_ID\":\"1\",\"Status\":\"1\",\"DateTime\":\"{}\"}}",
                    ts.strftime(IRIS_DATE_FORMAT)
                )
            })
        };
        let mut times: Vec<String> = (0..20_000)
            .map(|_| {
                let secs = rng.i64(-62_000_000_000..253_402_300_799);
                Timestamp::from_second(secs).unwrap().to_string()
            })
            .collect();
        // Forms the fast path must leave to jiff (or refuse like jiff does).
        times.extend(
            [
                "2016-02-30T10:00:00Z",
                "2016-02-29T23:59:60Z",
                "2016-13-01T00:00:00Z",
                "2016-07-27T24:00:00Z",
                "2016-07-27T16:17:22+02:00",
                "2016-07-27T16:17:22.5Z",
                "2016-07-27 16:17:22Z",
                "0999-07-27T16:17:22Z",
                "2016-07-2TT16:17:22Z",
                "+2016-07-27T16:17:2Z",
            ]
            .map(String::from),
        );
        for t in &times {
            match (render(t), reference(t)) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{t}"),
                (Err(_), Err(_)) => {}
                (ours, theirs) => panic!("{t}: ours {ours:?}, jiff {theirs:?}"),
            }
        }
    }

    #[test]
    fn payload_is_the_iris_shape() {
        let ev = event(
            r#"{"destination":"a","aam_uuid":"19393572368547369350319949416899715727","data_partner_uuid":"4250948725049857","segments":[{"segment_id":"14356","status":"1","time":"2016-07-27T16:17:22Z"}]}"#,
        );
        let u = render_user(&ev, Timestamp::UNIX_EPOCH).unwrap();
        let header = PayloadHeader {
            user_dpid: "12345".into(),
            client_id: "74323".into(),
            destination_id: "423".into(),
        };
        let mut out = Vec::new();
        header.write_payload(
            "2016-07-27T16:17:42Z".parse().unwrap(),
            &[u.clone(), u],
            &mut out,
        );
        let expected = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"12345","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"2","Users":[{"AAM_UUID":"19393572368547369350319949416899715727","DataPartner_UUID":"4250948725049857","Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]},{"AAM_UUID":"19393572368547369350319949416899715727","DataPartner_UUID":"4250948725049857","Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
        assert!(out.len() <= header.payload_size(2, 2 * 180));
        let parsed = parse_payload(&out, 10).unwrap();
        assert_eq!(parsed.users.len(), 2);
    }

    #[test]
    fn partner_uuid_is_escaped() {
        let ev = event(
            r#"{"destination":"a","aam_uuid":"1","data_partner_uuid":"q\"\\x","segments":[{"segment_id":"1","status":"0"}]}"#,
        );
        let u = render_user(&ev, Timestamp::UNIX_EPOCH).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&u.json).unwrap();
        assert_eq!(v["DataPartner_UUID"], "q\"\\x");
        assert_eq!(v["Segments"][0]["DateTime"], "Thu Jan 01 00:00:00 UTC 1970");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                r#"{"destination":"a","aam_uuid":"x1","segments":[{"segment_id":"1","status":"1"}]}"#,
                "aam_uuid",
            ),
            (
                r#"{"destination":"a","aam_uuid":"1","segments":[]}"#,
                "segments",
            ),
            (
                r#"{"destination":"a","aam_uuid":"1","segments":[{"segment_id":"1","status":"2"}]}"#,
                "segments[0].status",
            ),
            (
                r#"{"destination":"a","aam_uuid":"1","segments":[{"segment_id":"1","status":"1"},{"segment_id":"a","status":"1"}]}"#,
                "segments[1].segment_id",
            ),
            (
                r#"{"destination":"a","aam_uuid":"1","segments":[{"segment_id":"1","status":"1","time":"yesterday"}]}"#,
                "segments[0].time",
            ),
        ];
        for (line, field) in cases {
            let e = render_user(&event(line), Timestamp::UNIX_EPOCH).unwrap_err();
            assert_eq!(e.field, field, "{line}");
        }
    }

    #[test]
    fn strict_parser_rejects_what_iris_would_not_send() {
        let good = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"12345","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"1","Users":[{"AAM_UUID":"1","DataPartner_UUID":"","Segments":[{"Segment_ID":"1","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;
        assert!(parse_payload(good.as_bytes(), 10).is_ok());
        let reason = |s: &str| parse_payload(s.as_bytes(), 10).unwrap_err().reason;
        assert_eq!(
            reason(&good.replace(r#""User_count":"1""#, r#""User_count":"2""#)),
            "user_count_mismatch"
        );
        assert_eq!(
            reason(&good.replace(r#""User_count":"1""#, r#""User_count":1"#)),
            "invalid_json"
        );
        assert_eq!(
            reason(&good.replace("User_DPID", "User_Dpid")),
            "invalid_json"
        );
        assert_eq!(
            reason(&good.replace(r#""Status":"1""#, r#""Status":"5""#)),
            "invalid_field"
        );
        assert_eq!(
            reason(&good.replace("Wed Jul 27 16:17:22", "2016-07-27")),
            "invalid_date"
        );
        assert_eq!(
            parse_payload(good.as_bytes(), 0).unwrap_err().reason,
            "too_many_users"
        );
    }

    #[test]
    fn user_dpids_name_their_device_id_type() {
        assert_eq!(device_id_type("20914"), "Google Advertising ID (GAID)");
        assert_eq!(device_id_type("20915"), "Apple ID for Advertising (IDFA)");
        assert_eq!(device_id_type("12345"), "partner-specific (web IDs)");
    }
}

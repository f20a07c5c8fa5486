//! Streaming readers for batch files: NDJSON in the intake's event shape, or CSV with the
//! header `aam_uuid,data_partner_uuid,segment_id,status,time`, each optionally gzip'd.
//!
//! Memory is constant in the file size: one line at a time (at most [`MAX_LINE`] bytes) and one
//! user being assembled. Adjacent rows of the same user (same `aam_uuid` and
//! `data_partner_uuid`) become one `Users` entry with all their segments. A bad line becomes a
//! [`Item::Reject`] with its line number and reason and the file goes on; a file that is not the
//! declared format at all (wrong CSV header, first line not JSON, not gzip) fails as a whole.
//! Each user carries the input position after its last line, so a run can checkpoint there and
//! resume by skipping to it ([`BatchReader::skip_to`]).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::payload::{
    check_user_ids, render_segment, render_user_entry, IntakeEvent, UserRecord,
    MAX_SEGMENTS_PER_EVENT,
};

/// Longest line accepted; longer ones are rejected (and skipped without being held in memory).
pub const MAX_LINE: usize = 1024 * 1024;

/// The CSV header, exactly.
pub const CSV_HEADER: &str = "aam_uuid,data_partner_uuid,segment_id,status,time";

/// Batch file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Ndjson,
}

/// Format and compression of a file, from its name (`.csv`, `.ndjson`/`.jsonl`, plus `.gz`).
pub fn detect(path: &Path) -> Result<(Format, bool), String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let (stem, gzip) = match name.strip_suffix(".gz") {
        Some(stem) => (stem.to_string(), true),
        None => (name.clone(), false),
    };
    let format = if stem.ends_with(".csv") {
        Format::Csv
    } else if stem.ends_with(".ndjson") || stem.ends_with(".jsonl") {
        Format::Ndjson
    } else {
        return Err(format!(
            "cannot tell the format of {name:?}: name batch files *.csv or *.ndjson / *.jsonl, optionally with .gz"
        ));
    };
    Ok((format, gzip))
}

/// Where a reader is in its (decompressed) input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Bytes consumed.
    pub offset: u64,
    /// Lines consumed.
    pub line: u64,
}

/// What a reader yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One user, assembled from adjacent rows.
    User {
        record: UserRecord,
        segments: usize,
        /// Position after the user's last line: a checkpoint may be taken here.
        end: Position,
    },
    /// A line that could not be used.
    Reject {
        line: u64,
        reason: String,
        text: String,
    },
}

/// Why a file cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a {format:?} batch file: {reason}")]
    NotDeclaredFormat { format: Format, reason: String },
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
}

struct Pending {
    aam_uuid: String,
    data_partner_uuid: String,
    segments_json: Vec<u8>,
    segments: usize,
    end: Position,
}

/// Reads one batch file.
pub struct BatchReader {
    input: Box<dyn BufRead + Send>,
    format: Format,
    destination: String,
    pos: Position,
    first_line_seen: bool,
    pending: Option<Pending>,
    ready: Option<Item>,
    line: Vec<u8>,
    now: jiff::Timestamp,
    /// Reused for every CSV line: building one compiles a DFA, far costlier than a line.
    csv: csv_core::Reader,
    csv_out: Vec<u8>,
}

impl BatchReader {
    /// A reader over `input` (decompressing it when `gzip`), for events of `destination`.
    pub fn new(
        input: impl Read + Send + 'static,
        format: Format,
        gzip: bool,
        destination: &str,
    ) -> Self {
        let input: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::with_capacity(
                64 * 1024,
                flate2::read::MultiGzDecoder::new(BufReader::new(input)),
            ))
        } else {
            Box::new(BufReader::with_capacity(64 * 1024, input))
        };
        Self {
            input,
            format,
            destination: destination.to_string(),
            pos: Position::default(),
            first_line_seen: false,
            pending: None,
            ready: None,
            line: Vec::with_capacity(1024),
            now: jiff::Timestamp::now(),
            csv: csv_core::Reader::new(),
            csv_out: Vec::new(),
        }
    }

    pub fn position(&self) -> Position {
        self.pos
    }

    /// Skips the input up to `to` (a position a previous run checkpointed), checking the file
    /// still has the declared format.
    pub fn skip_to(&mut self, to: Position) -> Result<(), ReadError> {
        while self.pos.offset < to.offset {
            if self.read_line()?.is_none() {
                return Err(ReadError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ends before the checkpoint at byte {}", to.offset),
                )));
            }
            let first = !self.first_line_seen && !self.line.iter().all(u8::is_ascii_whitespace);
            if first {
                self.first_line_seen = true;
                self.check_first_line()?;
            }
        }
        Ok(())
    }

    /// Reads one line into `self.line` (without the line ending); `None` at the end. A line
    /// over [`MAX_LINE`] is consumed and returned truncated with `Some(true)`.
    fn read_line(&mut self) -> Result<Option<bool>, ReadError> {
        self.line.clear();
        let mut too_long = false;
        loop {
            let format = self.format;
            let buf = self
                .input
                .fill_buf()
                .map_err(|e| not_format_if_gzip(format, e))?;
            if buf.is_empty() {
                if self.line.is_empty() && !too_long {
                    return Ok(None);
                }
                break;
            }
            let (take, done) = match memchr_newline(buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            if take > room {
                too_long = true;
            }
            self.line.extend_from_slice(&buf[..take.min(room)]);
            self.input.consume(take);
            self.pos.offset += take as u64;
            if done {
                break;
            }
        }
        self.pos.line += 1;
        while matches!(self.line.last(), Some(b'\n' | b'\r')) {
            self.line.pop();
        }
        Ok(Some(too_long))
    }

    fn check_first_line(&self) -> Result<(), ReadError> {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_start_matches('\u{feff}').trim();
        let bad = |reason: String| ReadError::NotDeclaredFormat {
            format: self.format,
            reason,
        };
        match self.format {
            Format::Csv if !text.eq_ignore_ascii_case(CSV_HEADER) => Err(bad(format!(
                "line {} must be the header {CSV_HEADER:?}, found {:?}",
                self.pos.line,
                text.chars().take(80).collect::<String>()
            ))),
            Format::Ndjson if !text.starts_with('{') => {
                Err(bad(format!("line {} is not a JSON object", self.pos.line)))
            }
            _ => Ok(()),
        }
    }

    /// The next user or rejected line; `None` at the end of the file.
    pub fn next_item(&mut self) -> Result<Option<Item>, ReadError> {
        loop {
            if let Some(item) = self.ready.take() {
                return Ok(Some(item));
            }
            let Some(too_long) = self.read_line()? else {
                return Ok(self.pending.take().map(finish));
            };
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if !self.first_line_seen {
                self.first_line_seen = true;
                self.check_first_line()?;
                if self.format == Format::Csv {
                    continue;
                }
            }
            let line_no = self.pos.line;
            let reject = |reason: String, line: &[u8]| Item::Reject {
                line: line_no,
                reason,
                text: String::from_utf8_lossy(&line[..line.len().min(1024)]).into_owned(),
            };
            if too_long {
                let item = reject(format!("line longer than {MAX_LINE} bytes"), &self.line);
                return Ok(Some(self.emit_before(item)));
            }
            match self.parse_row() {
                Err(reason) => {
                    let item = reject(reason, &self.line);
                    return Ok(Some(self.emit_before(item)));
                }
                Ok((aam_uuid, dp_uuid, segments_json, segments)) => {
                    let end = self.pos;
                    if let Some(p) = &mut self.pending {
                        if p.aam_uuid == aam_uuid
                            && p.data_partner_uuid == dp_uuid
                            && p.segments + segments <= MAX_SEGMENTS_PER_EVENT
                        {
                            p.segments_json.push(b',');
                            p.segments_json.extend_from_slice(&segments_json);
                            p.segments += segments;
                            p.end = end;
                            continue;
                        }
                    }
                    let done = self.pending.replace(Pending {
                        aam_uuid,
                        data_partner_uuid: dp_uuid,
                        segments_json,
                        segments,
                        end,
                    });
                    if let Some(done) = done {
                        return Ok(Some(finish(done)));
                    }
                }
            }
        }
    }

    /// Rejects are reported after the user being assembled (so items stay in file order and
    /// checkpoints stay on user boundaries).
    fn emit_before(&mut self, reject: Item) -> Item {
        match self.pending.take() {
            Some(p) => {
                self.ready = Some(reject);
                finish(p)
            }
            None => reject,
        }
    }

    /// One row: (aam_uuid, data_partner_uuid, rendered segments, segment count).
    fn parse_row(&mut self) -> Result<(String, String, Vec<u8>, usize), String> {
        if self.format == Format::Csv {
            self.line.push(b'\n');
            let fields = csv_fields(&mut self.csv, &self.line, &mut self.csv_out);
            self.line.pop();
            return self.csv_row(fields?);
        }
        let line = std::str::from_utf8(&self.line).map_err(|_| "not UTF-8".to_string())?;
        match self.format {
            Format::Ndjson => {
                let ev: IntakeEvent<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
                if !ev.destination.is_empty() && ev.destination != self.destination {
                    return Err(format!(
                        "field `destination`: {:?} is not this batch's destination {:?}",
                        ev.destination, self.destination
                    ));
                }
                check_user_ids(&ev.aam_uuid, &ev.data_partner_uuid).map_err(|e| e.to_string())?;
                if ev.segments.is_empty() {
                    return Err("field `segments`: must list at least one segment".into());
                }
                let mut out = Vec::with_capacity(ev.segments.len() * 80);
                for (i, s) in ev.segments.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    render_segment(
                        &s.segment_id,
                        &s.status,
                        s.time.as_deref(),
                        self.now,
                        Some(i),
                        &mut out,
                    )
                    .map_err(|e| e.to_string())?;
                }
                Ok((
                    ev.aam_uuid.into_owned(),
                    ev.data_partner_uuid.into_owned(),
                    out,
                    ev.segments.len(),
                ))
            }
            Format::Csv => unreachable!("handled above"),
        }
    }

    fn csv_row(&self, f: Vec<String>) -> Result<(String, String, Vec<u8>, usize), String> {
        if f.len() != 5 {
            return Err(format!("{} fields, expected 5 ({CSV_HEADER})", f.len()));
        }
        check_user_ids(&f[0], &f[1]).map_err(|e| e.to_string())?;
        let time = (!f[4].is_empty()).then_some(f[4].as_str());
        let mut out = Vec::with_capacity(80);
        render_segment(&f[2], &f[3], time, self.now, None, &mut out).map_err(|e| e.to_string())?;
        let mut f = f.into_iter();
        let aam = f.next().unwrap_or_default();
        let dp = f.next().unwrap_or_default();
        Ok((aam, dp, out, 1))
    }
}

/// Corrupt compressed input means the file is not what its name declares.
fn not_format_if_gzip(format: Format, e: std::io::Error) -> ReadError {
    if e.kind() == std::io::ErrorKind::InvalidInput || e.kind() == std::io::ErrorKind::InvalidData {
        ReadError::NotDeclaredFormat {
            format,
            reason: format!("invalid gzip data ({e})"),
        }
    } else {
        ReadError::Io(e)
    }
}

fn finish(p: Pending) -> Item {
    Item::User {
        record: render_user_entry(&p.aam_uuid, &p.data_partner_uuid, &p.segments_json),
        segments: p.segments,
        end: p.end,
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// The fields of one CSV line (RFC 4180 quoting) ending in a newline, via csv-core. `reader`
/// is left ready for the next line; on a malformed line it is reset.
fn csv_fields(
    reader: &mut csv_core::Reader,
    line: &[u8],
    out: &mut Vec<u8>,
) -> Result<Vec<String>, String> {
    out.clear();
    out.resize(line.len() + 1, 0);
    let mut ends = [0usize; 16];
    let (result, _, _, nend) = reader.read_record(line, out, &mut ends);
    match result {
        csv_core::ReadRecordResult::Record => {
            let mut start = 0;
            let mut fields = Vec::with_capacity(nend);
            for &end in &ends[..nend] {
                let f =
                    std::str::from_utf8(&out[start..end]).map_err(|_| "not UTF-8".to_string())?;
                fields.push(f.to_string());
                start = end;
            }
            Ok(fields)
        }
        other => {
            reader.reset();
            Err(match other {
                csv_core::ReadRecordResult::OutputEndsFull => "more than 16 fields".into(),
                _ => "malformed CSV (an unterminated quote?)".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(format: Format, text: &str) -> Result<Vec<Item>, ReadError> {
        let mut r = BatchReader::new(
            std::io::Cursor::new(text.as_bytes().to_vec()),
            format,
            false,
            "a",
        );
        let mut out = Vec::new();
        while let Some(i) = r.next_item()? {
            out.push(i);
        }
        Ok(out)
    }

    fn user_json(i: &Item) -> serde_json::Value {
        match i {
            Item::User { record, .. } => serde_json::from_slice(&record.json).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv_rows_of_one_user_are_grouped_when_adjacent() {
        let text = "aam_uuid,data_partner_uuid,segment_id,status,time\n\
                    1,dp1,10,1,2016-07-27T16:17:22Z\n\
                    1,dp1,11,0,2016-07-27T16:17:22Z\n\
                    2,\"dp,2\",12,1,\n\
                    1,dp1,13,1,2016-07-27T16:17:22Z\n";
        let got = items(Format::Csv, text).unwrap();
        assert_eq!(got.len(), 3);
        let u = user_json(&got[0]);
        assert_eq!(u["AAM_UUID"], "1");
        assert_eq!(u["Segments"].as_array().unwrap().len(), 2);
        assert_eq!(u["Segments"][1]["Status"], "0");
        assert_eq!(u["Segments"][0]["DateTime"], "Wed Jul 27 16:17:22 UTC 2016");
        assert_eq!(user_json(&got[1])["DataPartner_UUID"], "dp,2");
        assert_eq!(
            user_json(&got[2])["Segments"].as_array().unwrap().len(),
            1,
            "not adjacent: a new entry"
        );
        let Item::User { end, .. } = &got[0] else {
            panic!()
        };
        assert_eq!(end.line, 3);
        assert_eq!(
            end.offset as usize,
            text.lines().take(3).map(|l| l.len() + 1).sum::<usize>()
        );
    }

    #[test]
    fn bad_lines_are_rejected_with_line_and_reason_and_the_rest_goes_on() {
        let text = "aam_uuid,data_partner_uuid,segment_id,status,time\n\
                    1,dp,10,1,\n\
                    x1,dp,10,1,\n\
                    2,dp,10,7,\n\
                    3,dp,10\n\
                    4,dp,10,1,yesterday\n\
                    5,dp,10,1,\n";
        let got = items(Format::Csv, text).unwrap();
        let rejects: Vec<(u64, String)> = got
            .iter()
            .filter_map(|i| match i {
                Item::Reject { line, reason, .. } => Some((*line, reason.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            rejects.iter().map(|r| r.0).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        assert!(rejects[0].1.contains("aam_uuid"), "{rejects:?}");
        assert!(rejects[1].1.contains("status"));
        assert!(rejects[2].1.contains("3 fields"));
        assert!(rejects[3].1.contains("time"));
        let users = got
            .iter()
            .filter(|i| matches!(i, Item::User { .. }))
            .count();
        assert_eq!(users, 2);
    }

    #[test]
    fn ndjson_lines_follow_the_intake_shape() {
        let text = r#"{"aam_uuid":"1","data_partner_uuid":"d","segments":[{"segment_id":"1","status":"1"}]}
{"destination":"a","aam_uuid":"1","data_partner_uuid":"d","segments":[{"segment_id":"2","status":"0"}]}
{"destination":"b","aam_uuid":"2","segments":[{"segment_id":"2","status":"0"}]}
not json
"#;
        let got = items(Format::Ndjson, text).unwrap();
        assert_eq!(user_json(&got[0])["Segments"].as_array().unwrap().len(), 2);
        assert!(
            matches!(&got[1], Item::Reject { line: 3, reason, .. } if reason.contains("destination"))
        );
        assert!(matches!(&got[2], Item::Reject { line: 4, .. }));
    }

    #[test]
    fn files_that_are_not_the_declared_format_fail_whole() {
        assert!(matches!(
            items(Format::Csv, "a,b,c\n1,2,3\n"),
            Err(ReadError::NotDeclaredFormat { .. })
        ));
        assert!(matches!(
            items(Format::Ndjson, "aam_uuid,x\n"),
            Err(ReadError::NotDeclaredFormat { .. })
        ));
        let mut r = BatchReader::new(
            std::io::Cursor::new(b"plain text".to_vec()),
            Format::Csv,
            true,
            "a",
        );
        assert!(matches!(
            r.next_item(),
            Err(ReadError::NotDeclaredFormat { .. })
        ));
    }

    #[test]
    fn resuming_skips_to_the_checkpoint() {
        let text =
            "aam_uuid,data_partner_uuid,segment_id,status,time\n1,d,1,1,\n2,d,1,1,\n3,d,1,1,\n";
        let all = items(Format::Csv, text).unwrap();
        let Item::User { end, .. } = all[1] else {
            panic!()
        };
        let mut r = BatchReader::new(
            std::io::Cursor::new(text.as_bytes().to_vec()),
            Format::Csv,
            false,
            "a",
        );
        r.skip_to(end).unwrap();
        let rest = r.next_item().unwrap().unwrap();
        assert_eq!(user_json(&rest)["AAM_UUID"], "3");
        assert!(r.next_item().unwrap().is_none());
    }

    #[test]
    fn overlong_lines_are_rejected_without_holding_them() {
        let mut text = String::from(
            "{\"aam_uuid\":\"1\",\"segments\":[{\"segment_id\":\"1\",\"status\":\"1\"}]}\n",
        );
        text.push_str(&"x".repeat(MAX_LINE + 10));
        text.push('\n');
        text.push_str(
            "{\"aam_uuid\":\"2\",\"segments\":[{\"segment_id\":\"1\",\"status\":\"1\"}]}\n",
        );
        let got = items(Format::Ndjson, &text).unwrap();
        assert!(
            matches!(&got[1], Item::Reject { line: 2, reason, text } if reason.contains("longer") && text.len() <= 1024)
        );
        assert_eq!(user_json(&got[2])["AAM_UUID"], "2");
    }

    #[test]
    fn formats_are_told_by_name() {
        assert_eq!(
            detect(Path::new("/x/a.csv.gz")).unwrap(),
            (Format::Csv, true)
        );
        assert_eq!(
            detect(Path::new("b.NDJSON")).unwrap(),
            (Format::Ndjson, false)
        );
        assert_eq!(
            detect(Path::new("c.jsonl.gz")).unwrap(),
            (Format::Ndjson, true)
        );
        assert!(detect(Path::new("d.txt")).is_err());
    }
}

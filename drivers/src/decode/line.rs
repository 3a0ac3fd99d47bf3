//! Text-line decoding: a [`LineSplitter`] cuts a serial byte stream into lines, and a
//! [`LineDecoder`] reads each with a regular expression with named captures, one capture
//! per field.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, NaiveDateTime, Utc};
use regex::{Regex, RegexBuilder};

use super::{DecodeError, FieldSpec};
use crate::reading::{DeviceIdentity, DeviceTime, Reading};

/// How to read a device timestamp out of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTimestamp {
    /// The names of the captures whose texts, joined with one space, form the timestamp.
    pub captures: Vec<String>,
    /// A `chrono` format string for the joined text (e.g. `%m/%d/%y %H:%M:%S`); a time
    /// without a zone is the device's local wall-clock time.
    pub format: String,
}

/// The most bytes a line regex may compile to (`regex`'s size limit).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A line decoder's regular expression: checked when it is made, compiled when it first
/// reads a line.
///
/// Every profile is loaded and checked at start, but only the profiles of configured
/// ports read lines, and a compiled regex with Unicode classes such as `\d` and `\s`
/// holds a few hundred KiB: a profile that reads nothing keeps only its pattern. Clones
/// share the compiled regex.
#[derive(Debug, Clone)]
pub struct LineRegex {
    pattern: String,
    compiled: Arc<OnceLock<Result<Regex, String>>>,
}

impl LineRegex {
    /// Checks `pattern` by compiling it (then dropping what was compiled); returns the
    /// regex and the names of its captures, in order.
    pub fn new(pattern: &str) -> Result<(Self, Vec<String>), regex::Error> {
        let names = compile(pattern)?
            .capture_names()
            .flatten()
            .map(str::to_string)
            .collect();
        Ok((
            Self {
                pattern: pattern.to_string(),
                compiled: Arc::default(),
            },
            names,
        ))
    }

    /// The pattern.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// The compiled regex (compiled on the first call).
    fn regex(&self) -> Result<&Regex, DecodeError> {
        self.compiled
            .get_or_init(|| compile(&self.pattern).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| {
                DecodeError::Mismatch(format!("the profile's regex does not compile: {e}"))
            })
    }
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// A line decoder.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    /// The regex applied to each line (without its terminator).
    pub regex: LineRegex,
    /// The fields, each read from the capture named in its `source`.
    pub fields: Vec<FieldSpec>,
    /// The device timestamp, if the line carries one.
    pub timestamp: Option<LineTimestamp>,
}

impl LineDecoder {
    /// Decodes one line into a reading from `device`.
    pub fn decode(
        &self,
        line: &str,
        device: Arc<DeviceIdentity>,
        received_at: DateTime<Utc>,
    ) -> Result<Reading, DecodeError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let caps = self.regex.regex()?.captures(line).ok_or_else(|| {
            DecodeError::Mismatch(format!(
                "line of {} characters does not match the profile's regex",
                line.len()
            ))
        })?;
        let mut quantities = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            if let Some(m) = caps.name(&field.source) {
                quantities.push(field.quantity_from_text(m.as_str())?);
            }
        }
        if quantities.is_empty() {
            return Err(DecodeError::Empty);
        }
        let device_time = match &self.timestamp {
            None => None,
            Some(ts) => {
                let parts: Option<Vec<&str>> = ts
                    .captures
                    .iter()
                    .map(|c| caps.name(c).map(|m| m.as_str()))
                    .collect();
                match parts {
                    None => None,
                    Some(parts) => {
                        let text = parts.join(" ");
                        let naive =
                            NaiveDateTime::parse_from_str(&text, &ts.format).map_err(|e| {
                                DecodeError::BadTimestamp(format!("{e} (format `{}`)", ts.format))
                            })?;
                        Some(DeviceTime::Local(naive))
                    }
                }
            }
        };
        Ok(Reading {
            clock: None,
            device,
            device_time,
            received_at,
            sequence: None,
            quantities,
            flags: Vec::new(),
        })
    }
}

/// What the splitter found in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// One complete line, without its terminator (and without stray CR/LF at either end).
    /// Bytes that are not UTF-8 are replaced by U+FFFD.
    Line(String),
    /// A line longer than the limit was discarded up to its terminator; `head` holds its
    /// first bytes (at most 64) for a debug log.
    TooLong {
        /// The first bytes of the discarded line.
        head: Vec<u8>,
    },
    /// The partial line the port was opened in the middle of was discarded.
    PartialFirstLine,
}

/// Cuts a byte stream into lines. Pure state machine, no IO.
///
/// - The first line after (re)opening a port is discarded: it usually starts mid-line.
/// - A line longer than `max_length` bytes is discarded up to its terminator, so memory
///   stays bounded whatever arrives.
/// - CR LF, LF and CR endings all work: the split happens on the terminator's last byte
///   (LF, or CR for a `"\r"` terminator) and stray CR/LF bytes are trimmed.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    split: u8,
    max_length: usize,
    buf: Vec<u8>,
    skipping: Option<Skip>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    FirstLine,
    TooLong,
}

impl LineSplitter {
    /// A splitter for lines ending with `terminator` (`"\n"`, `"\r\n"` or `"\r"`),
    /// at most `max_length` bytes long.
    pub fn new(terminator: &str, max_length: usize) -> Self {
        Self {
            split: if terminator == "\r" { b'\r' } else { b'\n' },
            max_length: max_length.max(1),
            buf: Vec::new(),
            skipping: Some(Skip::FirstLine),
        }
    }

    /// Starts over as after opening the port: the next partial line is discarded.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.skipping = Some(Skip::FirstLine);
    }

    /// Adds bytes read from the port and appends the events they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<LineEvent>) {
        for &b in bytes {
            if b == self.split {
                match self.skipping.take() {
                    Some(Skip::FirstLine) => out.push(LineEvent::PartialFirstLine),
                    Some(Skip::TooLong) => {}
                    None => {
                        let line = String::from_utf8_lossy(&self.buf);
                        let line = line.trim_matches(['\r', '\n']);
                        if !line.is_empty() {
                            out.push(LineEvent::Line(line.to_string()));
                        }
                    }
                }
                self.buf.clear();
            } else if self.skipping.is_some() {
                continue;
            } else if self.buf.len() >= self.max_length {
                let head = self.buf[..self.buf.len().min(64)].to_vec();
                out.push(LineEvent::TooLong { head });
                self.buf.clear();
                self.skipping = Some(Skip::TooLong);
            } else {
                self.buf.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Measurement, Transport};

    fn device() -> Arc<DeviceIdentity> {
        Arc::new(DeviceIdentity {
            revisions: Default::default(),
            profile: "masimo".into(),
            transport: Transport::Serial,
            address: "/dev/ttyUSB0".into(),
            serial_number: None,
            manufacturer: None,
            model: None,
        })
    }

    fn field(name: &str, unit: &str) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            source: name.into(),
            unit: unit.into(),
            scale: None,
            no_reading: vec!["---".into()],
        }
    }

    fn masimo() -> LineDecoder {
        LineDecoder {
            regex: LineRegex::new(r"^(?P<date>\d\d/\d\d/\d\d) (?P<time>\d\d:\d\d:\d\d) .*SPO2=(?P<spo2>[-\d]+)%? BPM=(?P<bpm>[-\d]+)").unwrap().0,
            fields: vec![field("spo2", "%"), field("bpm", "/min")],
            timestamp: Some(LineTimestamp {
                captures: vec!["date".into(), "time".into()],
                format: "%m/%d/%y %H:%M:%S".into(),
            }),
        }
    }

    #[test]
    fn a_masimo_line_decodes_with_its_local_time() {
        let r = masimo()
            .decode(
                "02/15/24 10:41:03 SN=0000012345 SPO2=097% BPM=072 PI=01.23%\r\n",
                device(),
                Utc::now(),
            )
            .unwrap();
        assert_eq!(r.quantities.len(), 2);
        assert_eq!(
            r.quantities[0].value.value().unwrap().to_string(),
            "097".parse::<rust_decimal::Decimal>().unwrap().to_string()
        );
        assert!(matches!(r.device_time, Some(DeviceTime::Local(_))));
    }

    #[test]
    fn dashes_mean_no_reading() {
        let r = masimo()
            .decode(
                "02/15/24 10:41:03 SN=0000012345 SPO2=---% BPM=---",
                device(),
                Utc::now(),
            )
            .unwrap();
        assert!(r
            .quantities
            .iter()
            .all(|q| matches!(q.value, Measurement::Absent(_))));
    }

    #[test]
    fn a_line_that_does_not_match_is_a_mismatch() {
        let err = masimo()
            .decode("garbage", device(), Utc::now())
            .unwrap_err();
        assert!(matches!(err, DecodeError::Mismatch(_)));
    }

    #[test]
    fn an_impossible_date_is_a_bad_timestamp() {
        let err = masimo()
            .decode("13/45/24 10:41:03 SPO2=97 BPM=72", device(), Utc::now())
            .unwrap_err();
        assert!(matches!(err, DecodeError::BadTimestamp(_)), "{err:?}");
    }

    fn split(terminator: &str, max: usize, chunks: &[&[u8]]) -> Vec<LineEvent> {
        let mut s = LineSplitter::new(terminator, max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        out
    }

    fn line(text: &str) -> LineEvent {
        LineEvent::Line(text.into())
    }

    #[test]
    fn the_partial_first_line_after_open_is_discarded() {
        let out = split("\r\n", 100, &[b"O2=097% BPM=072\r\nA=1\r\n"]);
        assert_eq!(out, vec![LineEvent::PartialFirstLine, line("A=1")]);
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let out = split("\n", 100, &[b"x\nSPO2=", b"097 BP", b"M=072\n"]);
        assert_eq!(out[1..], [line("SPO2=097 BPM=072")]);
    }

    #[test]
    fn cr_lf_and_lf_and_cr_endings_all_give_clean_lines() {
        assert_eq!(
            split("\n", 100, &[b"\nA\r\nB\n"])[1..],
            [line("A"), line("B")]
        );
        assert_eq!(
            split("\r", 100, &[b"\rA\r\nB\r"])[1..],
            [line("A"), line("B")]
        );
        assert_eq!(
            split("\r\n", 100, &[b"\nA\r\n\r\nB\n"])[1..],
            [line("A"), line("B")]
        );
    }

    #[test]
    fn an_over_long_line_is_capped_and_the_next_line_survives() {
        let long = vec![b'9'; 5000];
        let out = split("\n", 16, &[b"\n", &long, b"\nSPO2=97\n"]);
        assert!(matches!(&out[1], LineEvent::TooLong { head } if head.len() == 16));
        assert_eq!(out[2..], [line("SPO2=97")]);
    }

    #[test]
    fn non_utf8_noise_does_not_stop_the_splitter() {
        let out = split("\n", 100, &[b"\n\xff\xfe\n", b"A=1\n"]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], line("A=1"));
    }

    #[test]
    fn a_line_regex_is_compiled_by_its_first_line_and_shared_by_its_clones() {
        let d = masimo();
        assert!(d.regex.as_str().starts_with(r"^(?P<date>"));
        assert!(d.regex.compiled.get().is_none(), "checked, not kept");
        let copy = d.clone();
        copy.decode("02/15/24 10:41:03 SPO2=097% BPM=072", device(), Utc::now())
            .unwrap();
        assert!(d.regex.compiled.get().is_some_and(|r| r.is_ok()));
        // An invalid pattern is refused when the regex is made, with regex's reason.
        let e = LineRegex::new(r"(?P<spo2>[-\d+").unwrap_err();
        assert!(e.to_string().contains("unclosed"), "{e}");
        let (_, names) = LineRegex::new(r"(?P<a>\d)-(?P<b>\d)").unwrap();
        assert_eq!(names, ["a", "b"]);
    }
}

//! `[serial.line]`: one reading per text line, cut by a terminator and read with a regex
//! of named captures.

use std::ops::Range;

use iomt_drivers::decode::line::{LineDecoder, LineRegex, LineTimestamp};
use iomt_drivers::decode::stream::Framing;
use toml::Spanned;

use super::text_no_reading;
use crate::profile::field::field_spec;
use crate::profile::raw;
use crate::profile::Check;

pub(super) fn line_framing(
    line: &Spanned<raw::RawLine>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<Framing> {
    let line = line.get_ref();
    let (regex, names) = match LineRegex::new(line.regex.get_ref()) {
        Ok(r) => r,
        Err(e) => {
            c.at(
                line.regex.span(),
                format!(
                    "invalid regex: {}",
                    e.to_string().lines().last().unwrap_or("")
                ),
            );
            return None;
        }
    };
    let mut specs = Vec::new();
    for f in fields {
        let f = f.get_ref();
        if let Some(span) = frame_keys_present(f) {
            c.at(
                span,
                "`offset`, `type`, `endian`, `mask`, `shift` and `bits` are for [serial.frame] profiles; a line profile reads each field from a regex capture",
            );
        }
        let capture = f
            .capture
            .as_ref()
            .map(|c| c.get_ref().clone())
            .unwrap_or_else(|| f.name.get_ref().clone());
        if !names.contains(&capture) {
            let span = f
                .capture
                .as_ref()
                .map(|c| c.span())
                .unwrap_or(f.name.span());
            c.at(
                span,
                format!(
                    "the regex has no named capture `(?P<{capture}>...)` for field `{}`",
                    f.name.get_ref()
                ),
            );
        }
        let no_reading = text_no_reading(f, "a line", c);
        specs.push(field_spec(f, capture, no_reading));
    }
    let terminator = match line.terminator.as_ref() {
        None => "\n".to_string(),
        Some(t) if ["\n", "\r\n", "\r"].contains(&t.get_ref().as_str()) => t.get_ref().clone(),
        Some(t) => {
            c.at(
                t.span(),
                "terminator must be \"\\n\", \"\\r\\n\" or \"\\r\"",
            );
            "\n".into()
        }
    };
    let timestamp = if line.timestamp_captures.is_empty() {
        if let Some(f) = &line.timestamp_format {
            c.at(f.span(), "timestamp_format needs timestamp_captures");
        }
        None
    } else {
        for cap in &line.timestamp_captures {
            if !names.contains(cap.get_ref()) {
                c.at(
                    cap.span(),
                    format!("the regex has no named capture `{}`", cap.get_ref()),
                );
            }
        }
        match &line.timestamp_format {
            Some(f) => Some(LineTimestamp {
                captures: line
                    .timestamp_captures
                    .iter()
                    .map(|c| c.get_ref().clone())
                    .collect(),
                format: f.get_ref().clone(),
            }),
            None => {
                c.at(
                    line.timestamp_captures[0].span(),
                    "timestamp_captures needs a timestamp_format (e.g. \"%m/%d/%y %H:%M:%S\")",
                );
                None
            }
        }
    };
    let max_length = match &line.max_length {
        None => 1024,
        Some(m) if (1..=1 << 20).contains(m.get_ref()) => *m.get_ref(),
        Some(m) => {
            c.at(m.span(), "max_length must be between 1 and 1048576 bytes");
            1024
        }
    };
    Some(Framing::Line {
        terminator,
        max_length,
        decoder: LineDecoder {
            regex,
            fields: specs,
            timestamp,
        },
    })
}

fn frame_keys_present(f: &raw::RawField) -> Option<Range<usize>> {
    f.offset
        .as_ref()
        .map(|s| s.span())
        .or(f.ty.as_ref().map(|s| s.span()))
        .or(f.mask.as_ref().map(|s| s.span()))
        .or(f.shift.as_ref().map(|s| s.span()))
        .or(f.bits.as_ref().map(|s| s.span()))
        .or(f.endian.map(|_| f.name.span()))
}

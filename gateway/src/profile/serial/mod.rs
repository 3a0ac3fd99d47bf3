//! Validation of `[serial]` profiles: link settings, `[serial.line]`, `[serial.frame]` and
//! `[serial.poll]`, compiled into the serial driver's types.

use std::sync::Arc;
use std::time::Duration;

use iomt_drivers::decode::frame::FrameDecoder;
use iomt_drivers::decode::line::LineDecoder;
use iomt_drivers::decode::stream::Framing;
use iomt_drivers::serial::{FlowControl as LinkFlow, LinkSettings, Parity as LinkParity, Poll};
use toml::Spanned;

use super::raw::{self, FlowControl, NoReading, Parity};
use super::Check;

mod frame;
mod line;

/// Serial link settings, framing and polling.
#[derive(Debug, Clone)]
pub struct SerialSpec {
    /// Baud rate, data bits, parity, stop bits, flow control.
    pub link: LinkSettings,
    /// How the byte stream is cut and decoded.
    pub framing: Arc<Framing>,
    /// Requests written at an interval, if the device needs them.
    pub poll: Option<Poll>,
    /// `live_clock`: the device stamps each line or frame by its clock as it sends it.
    pub live_clock: bool,
}

impl SerialSpec {
    /// The line decoder, for a line-oriented profile.
    pub fn line(&self) -> Option<&LineDecoder> {
        match &*self.framing {
            Framing::Line { decoder, .. } => Some(decoder),
            Framing::Frame(_) => None,
        }
    }

    /// Whether the device's time stamp is read from each line or frame.
    pub fn has_timestamp(&self) -> bool {
        has_timestamp(&self.framing)
    }

    /// The frame decoder, for a binary profile.
    pub fn frame(&self) -> Option<&FrameDecoder> {
        match &*self.framing {
            Framing::Frame(d) => Some(d),
            Framing::Line { .. } => None,
        }
    }
}

/// Rejects integer `no_reading` entries where texts are expected; returns the texts.
pub(super) fn text_no_reading(f: &raw::RawField, what: &str, c: &mut Check<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for n in &f.no_reading {
        match n {
            NoReading::Text(t) => out.push(t.clone()),
            NoReading::Raw(v) => c.at(
                f.name.span(),
                format!(
                    "field `{}`: no_reading of {what} is a text such as \"---\"; write \"{v}\"",
                    f.name.get_ref()
                ),
            ),
        }
    }
    out
}

pub(super) fn serial_spec(
    s: &Spanned<raw::RawSerial>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<SerialSpec> {
    let span = s.span();
    let s = s.get_ref();
    if *s.baud.get_ref() == 0 {
        c.at(s.baud.span(), "baud must be greater than zero");
    }
    let data_bits = s.data_bits.as_ref().map(|d| (*d.get_ref(), d.span()));
    if let Some((d, span)) = &data_bits {
        if !(5..=8).contains(d) {
            c.at(span.clone(), "data_bits must be 5, 6, 7 or 8");
        }
    }
    if let Some(sb) = &s.stop_bits {
        if !matches!(sb.get_ref(), 1 | 2) {
            c.at(sb.span(), "stop_bits must be 1 or 2");
        }
    }
    let poll = s.poll.as_ref().and_then(|p| poll_spec(p, c));
    let framing = match (&s.line, &s.frame) {
        (Some(_), Some(f)) => {
            c.at(
                f.span(),
                "a serial profile has one framing: [serial.line] (text) or [serial.frame] (binary), not both",
            );
            return None;
        }
        (None, None) => {
            c.at(
                span,
                "the serial profile has no decoder: add a [serial.line] table with a `regex`, or a [serial.frame] table",
            );
            return None;
        }
        (Some(line), None) => line::line_framing(line, fields, c)?,
        (None, Some(frame)) => Framing::Frame(Box::new(frame::frame_decoder(frame, fields, c)?)),
    };
    let live_clock = s.live_clock.as_ref().is_some_and(|l| *l.get_ref());
    if let Some(l) = s.live_clock.as_ref().filter(|_| live_clock) {
        if !has_timestamp(&framing) {
            c.at(
                l.span(),
                "live_clock needs the device's time stamp: declare timestamp_captures in [serial.line] or [serial.frame.timestamp]",
            );
        }
    }
    Some(SerialSpec {
        link: LinkSettings {
            baud: *s.baud.get_ref(),
            data_bits: data_bits.map(|d| d.0).unwrap_or(8),
            parity: match s.parity.unwrap_or(Parity::None) {
                Parity::None => LinkParity::None,
                Parity::Odd => LinkParity::Odd,
                Parity::Even => LinkParity::Even,
            },
            stop_bits: s.stop_bits.as_ref().map(|s| *s.get_ref()).unwrap_or(1),
            flow_control: match s.flow_control.unwrap_or(FlowControl::None) {
                FlowControl::None => LinkFlow::None,
                FlowControl::Software => LinkFlow::Software,
                FlowControl::Hardware => LinkFlow::Hardware,
            },
        },
        framing: Arc::new(framing),
        poll,
        live_clock,
    })
}

/// Whether the framing reads a device time stamp.
fn has_timestamp(framing: &Framing) -> bool {
    match framing {
        Framing::Line { decoder, .. } => decoder.timestamp.is_some(),
        Framing::Frame(d) => d.timestamp.is_some(),
    }
}

/// Parses hex bytes, spaces allowed (`"F5 F5"`, `"7d81a1"`).
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text
        .chars()
        .filter(|ch| !ch.is_whitespace() && *ch != ':')
        .collect();
    let compact = compact.strip_prefix("0x").unwrap_or(&compact);
    hex::decode(compact).map_err(|e| format!("not hex bytes ({e}); write them like \"01 81 02\""))
}

fn poll_spec(p: &Spanned<raw::RawPoll>, c: &mut Check<'_>) -> Option<Poll> {
    let span = p.span();
    let p = p.get_ref();
    let request = match (&p.request, &p.request_hex) {
        (Some(t), None) => t.get_ref().as_bytes().to_vec(),
        (None, Some(h)) => match parse_hex(h.get_ref()) {
            Ok(b) => b,
            Err(e) => {
                c.at(h.span(), format!("request_hex: {e}"));
                return None;
            }
        },
        _ => {
            c.at(
                span,
                "[serial.poll] needs exactly one of `request` (text) or `request_hex`",
            );
            return None;
        }
    };
    if request.is_empty() {
        c.at(span, "the poll request is empty");
    }
    let ms = *p.interval_ms.get_ref();
    if !(10..=86_400_000).contains(&ms) {
        c.at(
            p.interval_ms.span(),
            "interval_ms must be between 10 and 86400000",
        );
    }
    Some(Poll {
        request,
        interval: Duration::from_millis(ms.max(10)),
    })
}

//! `[serial.frame]`: binary frame layouts (size or length prefix, sync patterns,
//! checksum, packets) and the fields, flags and timestamp read from them.

use std::ops::Range;

use iomt_drivers::decode::frame::{
    BitRange, BytePattern, Checksum, ChecksumKind, Endian, FlagKind, FrameDecoder, FrameField,
    FrameFlag, FrameSize, FrameSpec, FrameTimestamp, IntType, Packet, ValueLayout,
};
use toml::Spanned;

use crate::profile::field::field_spec;
use crate::profile::raw::{self, Endianness, NoReading};
use crate::profile::Check;

/// The largest binary frame a profile may declare.
const MAX_FRAME: i64 = 65_536;

fn endian(e: Option<Endianness>) -> Endian {
    match e {
        Some(Endianness::Little) => Endian::Little,
        _ => Endian::Big,
    }
}

/// A byte value 0..=255, or an error at its span.
fn byte(v: &Spanned<i64>, what: &str, c: &mut Check<'_>) -> u8 {
    match u8::try_from(*v.get_ref()) {
        Ok(b) => b,
        Err(_) => {
            c.at(v.span(), format!("{what} must be a byte, 0 to 255 (0xFF)"));
            0
        }
    }
}

/// An offset within a frame of `size` bytes (negative counts from the end), checked
/// when the size is fixed.
fn offset(v: &Spanned<i64>, size: Option<i64>, negative_ok: bool, c: &mut Check<'_>) -> isize {
    let o = *v.get_ref();
    if o < 0 && !negative_ok {
        c.at(v.span(), "offset must be 0 or more");
    } else if let Some(size) = size {
        if o >= size || o < -size {
            c.at(
                v.span(),
                format!("offset {o} lies outside the {size}-byte frame"),
            );
        }
    } else if !(-MAX_FRAME..MAX_FRAME).contains(&o) {
        c.at(v.span(), "offset is larger than any frame");
    }
    o as isize
}

fn pattern(p: &Spanned<raw::RawPattern>, size: Option<i64>, c: &mut Check<'_>) -> BytePattern {
    let r = p.get_ref();
    let mask = r.mask.as_ref().map(|m| byte(m, "mask", c)).unwrap_or(0xFF);
    let value = byte(&r.value, "value", c);
    if value & !mask != 0 {
        c.at(
            r.value.span(),
            format!("value 0x{value:02X} has bits outside mask 0x{mask:02X}; it can never match"),
        );
    }
    BytePattern {
        offset: offset(&r.offset, size, true, c),
        mask,
        value,
    }
}

fn int_type(t: Option<&Spanned<String>>, c: &mut Check<'_>) -> IntType {
    match t {
        None => IntType::U8,
        Some(t) => IntType::from_name(t.get_ref()).unwrap_or_else(|| {
            c.at(
                t.span(),
                format!(
                    "unknown type `{}`; use u8, i8, u16, i16, u32 or i32",
                    t.get_ref()
                ),
            );
            IntType::U8
        }),
    }
}

/// The parts of a value's layout, from a field or a timestamp part.
struct LayoutKeys<'a> {
    offset: Option<&'a Spanned<i64>>,
    ty: Option<&'a Spanned<String>>,
    endian: Option<Endianness>,
    mask: Option<&'a Spanned<i64>>,
    shift: Option<&'a Spanned<i64>>,
    bits: Option<&'a Spanned<Vec<String>>>,
}

impl<'a> LayoutKeys<'a> {
    fn of_field(f: &'a raw::RawField) -> Self {
        Self {
            offset: f.offset.as_ref(),
            ty: f.ty.as_ref(),
            endian: f.endian,
            mask: f.mask.as_ref(),
            shift: f.shift.as_ref(),
            bits: f.bits.as_ref(),
        }
    }

    fn of_raw(l: &'a raw::RawLayout) -> Self {
        Self {
            offset: l.offset.as_ref(),
            ty: l.ty.as_ref(),
            endian: l.endian,
            mask: l.mask.as_ref(),
            shift: l.shift.as_ref(),
            bits: l.bits.as_ref(),
        }
    }
}

/// Validates a layout; `unit` is the fixed size of a frame or packet, when known.
fn layout(
    k: LayoutKeys<'_>,
    what: &str,
    span: Range<usize>,
    unit: Option<i64>,
    c: &mut Check<'_>,
) -> Option<ValueLayout> {
    let l = match (k.offset, k.bits) {
        (Some(_), Some(b)) => {
            c.at(
                b.span(),
                format!("{what}: give either `offset` or `bits`, not both"),
            );
            return None;
        }
        (None, None) => {
            c.at(
                span,
                format!("{what} needs its place in the frame: `offset` (with optional `type`, `endian`, `mask`, `shift`) or `bits`"),
            );
            return None;
        }
        (None, Some(bits)) => {
            for (key, present) in [
                ("type", k.ty.map(|t| t.span())),
                ("mask", k.mask.map(|m| m.span())),
                ("shift", k.shift.map(|s| s.span())),
            ] {
                if let Some(span) = present {
                    c.at(span, format!("{what}: `{key}` does not apply to `bits`"));
                }
            }
            let mut ranges = Vec::new();
            for text in bits.get_ref() {
                match BitRange::parse(text) {
                    Some(r) => ranges.push(r),
                    None => c.at(
                        bits.span(),
                        format!("{what}: `{text}` is not a bit range; write BYTE[HIGH:LOW] or BYTE[BIT], e.g. \"0[1:0]\""),
                    ),
                }
            }
            if bits.get_ref().is_empty() {
                c.at(bits.span(), format!("{what}: `bits` is empty"));
            }
            if ranges.is_empty() {
                return None;
            }
            if ranges.iter().map(|r| r.width()).sum::<u32>() > 63 {
                c.at(bits.span(), format!("{what}: more than 63 bits"));
            }
            ValueLayout::Bits(ranges)
        }
        (Some(o), None) => {
            let ty = int_type(k.ty, c);
            let mask = k.mask.map(|m| {
                let v = *m.get_ref();
                if v <= 0 {
                    c.at(m.span(), format!("{what}: mask must be greater than 0"));
                }
                v as u64
            });
            let shift = k.shift.map(|s| {
                let v = *s.get_ref();
                if !(0..=31).contains(&v) {
                    c.at(s.span(), format!("{what}: shift must be 0 to 31"));
                }
                v.clamp(0, 31) as u32
            });
            if ty.signed() && (mask.is_some() || shift.is_some()) {
                c.at(
                    o.span(),
                    format!(
                        "{what}: `mask` and `shift` extract unsigned bits; use an unsigned type"
                    ),
                );
            }
            ValueLayout::Int {
                offset: offset(o, None, false, c).max(0) as usize,
                ty,
                endian: endian(k.endian),
                mask,
                shift: shift.unwrap_or(0),
            }
        }
    };
    if let Some(unit) = unit {
        if l.end() as i64 > unit {
            c.at(
                k.offset
                    .map(|o| o.span())
                    .or(k.bits.map(|b| b.span()))
                    .unwrap_or(span),
                format!("{what} lies beyond the {unit}-byte frame"),
            );
        }
    }
    Some(l)
}

fn raw_no_reading(f: &raw::RawField, c: &mut Check<'_>) -> Vec<i64> {
    let mut out = Vec::new();
    for n in &f.no_reading {
        match n {
            NoReading::Raw(v) => out.push(*v),
            NoReading::Text(t) => c.at(
                f.name.span(),
                format!("field `{}`: no_reading of a binary frame is a raw integer (e.g. 511), not the text `{t}`", f.name.get_ref()),
            ),
        }
    }
    out
}

pub(super) fn frame_decoder(
    frame: &Spanned<raw::RawFrame>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<FrameDecoder> {
    let frame_span = frame.span();
    let f = frame.get_ref();
    let (size, fixed) = match (&f.size, &f.length) {
        (Some(_), Some(l)) => {
            c.at(
                l.span(),
                "give either `size` (fixed frames) or `length` (length-prefixed frames), not both",
            );
            return None;
        }
        (None, None) => {
            c.at(
                frame_span,
                "[serial.frame] needs `size` (fixed frames) or `length` (length-prefixed frames)",
            );
            return None;
        }
        (Some(s), None) => {
            let n = *s.get_ref();
            if !(1..=MAX_FRAME).contains(&n) {
                c.at(
                    s.span(),
                    format!("size must be between 1 and {MAX_FRAME} bytes"),
                );
                return None;
            }
            (FrameSize::Fixed(n as usize), Some(n))
        }
        (None, Some(l)) => {
            let l = l.get_ref();
            let ty = int_type(l.ty.as_ref(), c);
            if ty.signed() {
                if let Some(t) = &l.ty {
                    c.at(t.span(), "a length field is unsigned: use u8, u16 or u32");
                }
            }
            let max = l.max.as_ref().map(|m| *m.get_ref()).unwrap_or(256);
            if !(1..=MAX_FRAME).contains(&max) {
                if let Some(m) = &l.max {
                    c.at(
                        m.span(),
                        format!("max must be between 1 and {MAX_FRAME} bytes"),
                    );
                }
            }
            let off = offset(&l.offset, None, false, c);
            (
                FrameSize::Prefixed {
                    offset: off.max(0) as usize,
                    ty,
                    endian: endian(l.endian),
                    add: l.add.as_ref().map(|a| *a.get_ref()).unwrap_or(0),
                    max: max.clamp(1, MAX_FRAME) as usize,
                },
                None,
            )
        }
    };
    let sync: Vec<BytePattern> = f.sync.iter().map(|p| pattern(p, fixed, c)).collect();
    let checksum = f.checksum.as_ref().and_then(|ck| {
        let r = ck.get_ref();
        let Some(kind) = ChecksumKind::from_name(r.kind.get_ref()) else {
            let names: Vec<&str> = ChecksumKind::ALL.iter().map(|(n, _)| *n).collect();
            c.at(
                r.kind.span(),
                format!(
                    "unknown checksum `{}`; known: {}",
                    r.kind.get_ref(),
                    names.join(", ")
                ),
            );
            return None;
        };
        let width = kind.size() as isize;
        let at =
            r.at.as_ref()
                .map(|a| offset(a, fixed, true, c))
                .unwrap_or(-width);
        let to = match &r.to {
            Some(t) => *t.get_ref() as isize,
            None => at,
        };
        let from = r.from.as_ref().map(|v| *v.get_ref() as isize).unwrap_or(0);
        if let Some(size) = fixed {
            let size = size as isize;
            let abs = |o: isize| if o < 0 { size + o } else { o };
            if abs(from) < 0 || abs(to) > size || abs(from) > abs(to) {
                c.at(
                    ck.span(),
                    format!("the checksum range {from}..{to} does not fit the {size}-byte frame"),
                );
            }
            if abs(at) + width > size {
                c.at(
                    ck.span(),
                    format!("the {width}-byte checksum at {at} does not fit the {size}-byte frame"),
                );
            }
        }
        Some(Checksum {
            kind,
            from,
            to,
            at,
            endian: endian(r.endian),
        })
    });
    let packet = f.packet.as_ref().and_then(|p| {
        let r = p.get_ref();
        let frames = *r.frames.get_ref();
        if !(2..=1000).contains(&frames) {
            c.at(r.frames.span(), "a packet has 2 to 1000 frames");
            return None;
        }
        if r.start.is_empty() {
            c.at(
                p.span(),
                "a packet needs `start` patterns marking its first frame",
            );
        }
        Some(Packet {
            frames: frames as usize,
            start: r.start.iter().map(|s| pattern(s, fixed, c)).collect(),
        })
    });
    // Fields address the whole unit: one frame, or a packet of frames.
    let unit = fixed.map(|s| s * packet.as_ref().map(|p| p.frames as i64).unwrap_or(1));
    let mut out_fields = Vec::new();
    for field in fields {
        let fr = field.get_ref();
        if let Some(cap) = &fr.capture {
            c.at(
                cap.span(),
                "`capture` is for [serial.line] profiles; a frame field has `offset` or `bits`",
            );
        }
        let what = format!("field `{}`", fr.name.get_ref());
        let Some(l) = layout(LayoutKeys::of_field(fr), &what, fr.name.span(), unit, c) else {
            continue;
        };
        let no_reading = raw_no_reading(fr, c);
        out_fields.push(FrameField {
            spec: field_spec(fr, fr.name.get_ref().clone(), Vec::new()),
            layout: l,
            no_reading,
        });
    }
    let mut flags = Vec::new();
    for fl in &f.flags {
        let r = fl.get_ref();
        let Some(kind) = FlagKind::ALL
            .iter()
            .find(|(n, _)| n == r.flag.get_ref())
            .map(|(_, k)| *k)
        else {
            let names: Vec<&str> = FlagKind::ALL.iter().map(|(n, _)| *n).collect();
            c.at(
                r.flag.span(),
                format!(
                    "unknown flag `{}`; known: {}",
                    r.flag.get_ref(),
                    names.join(", ")
                ),
            );
            continue;
        };
        let mask = byte(&r.mask, "mask", c);
        let value = r
            .value
            .as_ref()
            .map(|v| byte(v, "value", c))
            .unwrap_or(mask);
        if value & !mask != 0 {
            c.at(
                fl.span(),
                "the flag's value has bits outside its mask; it can never match",
            );
        }
        flags.push(FrameFlag {
            pattern: BytePattern {
                offset: offset(&r.offset, unit, false, c),
                mask,
                value,
            },
            kind,
        });
    }
    let timestamp = f.timestamp.as_ref().and_then(|t| {
        let r = t.get_ref();
        let part = |name: &str, l: &Spanned<raw::RawLayout>, c: &mut Check<'_>| {
            layout(
                LayoutKeys::of_raw(l.get_ref()),
                &format!("timestamp `{name}`"),
                l.span(),
                unit,
                c,
            )
        };
        let century = match &r.century {
            Some(cy) => Some(part("century", cy, c)?),
            None => None,
        };
        let second = match &r.second {
            Some(s) => part("second", s, c)?,
            None => ValueLayout::Bits(Vec::new()),
        };
        Some(FrameTimestamp {
            century,
            year: part("year", &r.year, c)?,
            year_base: r.year_base.unwrap_or(0),
            month: part("month", &r.month, c)?,
            day: part("day", &r.day, c)?,
            hour: part("hour", &r.hour, c)?,
            minute: part("minute", &r.minute, c)?,
            second,
        })
    });
    Some(FrameDecoder {
        spec: FrameSpec {
            size,
            sync,
            checksum,
            packet,
        },
        fields: out_fields,
        flags,
        timestamp,
    })
}

//! Serial device simulators: the byte formats of the shipped serial profiles, written
//! independently of the decoders (so a test of decoder against simulator checks two
//! readings of the same public format), with slowly varying realistic values and an
//! occasional "no reading" message.
//!
//! Used by the end-to-end tests and by `iomt-gateway demo --serial`, which write them to
//! a [`Pty`](super::pty::Pty).

use std::str::FromStr;

use chrono::{Datelike, NaiveDateTime, Timelike};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A serial output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFormat {
    /// Masimo Rad-8 / Radical-7 "ASCII 1" trend line, once a second, CR LF.
    MasimoAscii1,
    /// Nonin OEM III serial data format 2: 25 five-byte frames per packet.
    NoninOem3Format2,
    /// Nonin 9560 data format 13: a STX/ETX spot-check record with date and time.
    Nonin9560Format13,
    /// Contec CMS50 (older firmware): 5-byte live packets with bit-7 sync.
    ContecCms50,
    /// Tanita BC-418: one CSV result line.
    TanitaBc418,
}

impl SimFormat {
    /// All formats with their names.
    pub const ALL: &'static [(&'static str, SimFormat)] = &[
        ("masimo-ascii1", SimFormat::MasimoAscii1),
        ("nonin-oem3-format2", SimFormat::NoninOem3Format2),
        ("nonin-9560-format13", SimFormat::Nonin9560Format13),
        ("contec-cms50", SimFormat::ContecCms50),
        ("tanita-bc418", SimFormat::TanitaBc418),
    ];

    /// The shortest time between two messages of the real device: formats that stamp
    /// messages with a clock of one-second (or one-minute) resolution send no more
    /// often, so two messages never share a timestamp.
    pub fn min_period(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            SimFormat::MasimoAscii1 | SimFormat::Nonin9560Format13 => 1,
            SimFormat::TanitaBc418 => 60,
            SimFormat::NoninOem3Format2 | SimFormat::ContecCms50 => 0,
        })
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("")
    }
}

impl FromStr for SimFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown serial format `{s}`; known: {}", names.join(", "))
            })
    }
}

/// The values one simulated message carries (`None`: the device reports no reading).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimValues {
    /// SpO2 in %.
    pub spo2: Option<u8>,
    /// Pulse rate in /min.
    pub pulse: Option<u16>,
    /// Body weight in tenths of a kg.
    pub weight_dg: u32,
    /// Body fat in tenths of a %.
    pub fat_permille: u32,
}

/// A simulated serial device.
#[derive(Debug, Clone)]
pub struct SerialSim {
    format: SimFormat,
    rng: SmallRng,
    spo2: f64,
    pulse: f64,
    weight: f64,
    fat: f64,
    no_reading_probability: f64,
}

impl SerialSim {
    /// A simulator of `format`; the same seed gives the same bytes.
    pub fn new(format: SimFormat, seed: u64) -> Self {
        Self {
            format,
            rng: SmallRng::seed_from_u64(seed),
            spo2: 97.0,
            pulse: 72.0,
            weight: 72.4,
            fat: 18.5,
            no_reading_probability: 0.05,
        }
    }

    /// Sets the probability of a "no reading" message (finger out, no measurement).
    pub fn with_no_reading_probability(mut self, p: f64) -> Self {
        self.no_reading_probability = p.clamp(0.0, 1.0);
        self
    }

    /// The format.
    pub fn format(&self) -> SimFormat {
        self.format
    }

    /// The next values: a mean-reverting random walk.
    pub fn next_values(&mut self) -> SimValues {
        let step = |v: &mut f64, mean: f64, sd: f64, rng: &mut SmallRng| {
            *v += 0.2 * (mean - *v) + rng.gen_range(-sd..=sd);
        };
        step(&mut self.spo2, 97.0, 0.8, &mut self.rng);
        step(&mut self.pulse, 72.0, 3.0, &mut self.rng);
        step(&mut self.weight, 72.4, 0.1, &mut self.rng);
        step(&mut self.fat, 18.5, 0.2, &mut self.rng);
        let absent = self.rng.gen_bool(self.no_reading_probability);
        SimValues {
            spo2: (!absent).then(|| self.spo2.round().clamp(70.0, 100.0) as u8),
            pulse: (!absent).then(|| self.pulse.round().clamp(30.0, 250.0) as u16),
            weight_dg: (self.weight * 10.0).round().max(0.0) as u32,
            fat_permille: (self.fat * 10.0).round().max(0.0) as u32,
        }
    }

    /// The next message, stamped with the device's wall clock `now` where the format
    /// carries a time.
    pub fn next_message(&mut self, now: NaiveDateTime) -> Vec<u8> {
        let v = self.next_values();
        encode(self.format, &v, now)
    }
}

/// Encodes `v` in `format`.
pub fn encode(format: SimFormat, v: &SimValues, now: NaiveDateTime) -> Vec<u8> {
    match format {
        SimFormat::MasimoAscii1 => masimo(v, now).into_bytes(),
        SimFormat::NoninOem3Format2 => nonin_packet(v.pulse.unwrap_or(511), v.spo2.unwrap_or(127)),
        SimFormat::Nonin9560Format13 => nonin_df13(v, now),
        SimFormat::ContecCms50 => cms50(v),
        SimFormat::TanitaBc418 => tanita(v, now).into_bytes(),
    }
}

fn masimo(v: &SimValues, now: NaiveDateTime) -> String {
    let (spo2, bpm, exc) = match (v.spo2, v.pulse) {
        (Some(s), Some(p)) => (format!("{s:03}"), format!("{p:03}"), "000800"),
        _ => ("---".into(), "---".into(), "000001"),
    };
    format!(
        "{} SN=0000056661 SPO2={spo2}% BPM={bpm} PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC={exc}\r\n",
        now.format("%m/%d/%y %H:%M:%S")
    )
}

/// One Nonin OEM III format 2 frame: `01 STATUS PLETH FLOAT CHK`.
pub fn nonin_frame(index: usize, pleth: u8, float: u8) -> [u8; 5] {
    let status = 0x80 | u8::from(index == 0);
    let mut f = [0x01, status, pleth, float, 0];
    f[4] = f[..4].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f
}

/// A whole 25-frame packet carrying heart rate `hr` (511: none) and SpO2 (127: none).
pub fn nonin_packet(hr: u16, spo2: u8) -> Vec<u8> {
    (0..25)
        .flat_map(|i| {
            let float = match i {
                0 => ((hr >> 7) & 0x03) as u8,
                1 => (hr & 0x7F) as u8,
                2 => spo2,
                3 => 0x30,
                _ => 0,
            };
            nonin_frame(i, (40 + i * 3) as u8 & 0x7F, float)
        })
        .collect()
}

fn nonin_df13(v: &SimValues, now: NaiveDateTime) -> Vec<u8> {
    let year = now.year().clamp(0, 9999) as u32;
    let no_measurement = v.pulse.is_none();
    let status: u16 = if no_measurement { 0x0100 } else { 0 };
    let mut data = vec![
        (year / 100) as u8,
        (year % 100) as u8,
        now.month() as u8,
        now.day() as u8,
        now.hour() as u8,
        now.minute() as u8,
        now.second() as u8,
        0,
    ];
    data.extend(status.to_be_bytes());
    data.extend(v.pulse.unwrap_or(0x1FF).to_be_bytes());
    data.push(0);
    data.push(v.spo2.unwrap_or(0x7F));
    let mut f = vec![0x00, 0x02, 0x00, 0x0D];
    f.extend((data.len() as u16).to_be_bytes());
    let sum = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f.extend(data);
    f.push(sum);
    f.push(0x03);
    f
}

fn cms50(v: &SimValues) -> Vec<u8> {
    let finger_out = v.pulse.is_none();
    let pr = v.pulse.unwrap_or(0).min(255);
    let b0 = 0x80 | if finger_out { 0x10 } else { 0x05 };
    let b2 = 0x08 | if pr & 0x80 != 0 { 0x40 } else { 0 };
    vec![
        b0,
        0x3C,
        b2,
        (pr & 0x7F) as u8,
        v.spo2.unwrap_or(0x7F) & 0x7F,
    ]
}

fn tanita(v: &SimValues, now: NaiveDateTime) -> String {
    let weight = f64::from(v.weight_dg) / 10.0;
    let fat = f64::from(v.fat_permille) / 10.0;
    let fat_mass = weight * fat / 100.0;
    let bmi = weight / (1.75 * 1.75);
    let mut fields = vec![
        format!("\"{}\"", now.format("%d/%m/%y")),
        format!("\"{}\"", now.format("%H:%M")),
        "0".into(),
        "1".into(),
        "175".into(),
        format!("{weight:.1}"),
        format!("{fat:.1}"),
        format!("{fat_mass:.1}"),
        format!("{:.1}", weight - fat_mass),
        format!("{:.1}", (weight - fat_mass) * 0.73),
        "45".into(),
        format!("{bmi:.1}"),
        "7012".into(),
        "512".into(),
    ];
    fields.extend(["245", "250", "320", "318"].map(String::from));
    fields.extend((0..20).map(|i| format!("{:.1}", 10.0 + f64::from(i))));
    fields.join(",") + "\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noon() -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2024, 3, 15)
            .unwrap()
            .and_hms_opt(10, 42, 7)
            .unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let mut a = SerialSim::new(SimFormat::MasimoAscii1, 7);
        let mut b = SerialSim::new(SimFormat::MasimoAscii1, 7);
        for _ in 0..20 {
            assert_eq!(a.next_message(noon()), b.next_message(noon()));
        }
    }

    #[test]
    fn the_nonin_packet_matches_the_public_test_vector() {
        let p = nonin_packet(72, 97);
        assert_eq!(p.len(), 125);
        // HR 72 = MSB 0, LSB 0x48; SpO2 97 = 0x61; firmware 0x30; SYNC only on frame 1.
        assert_eq!([p[3], p[8], p[13], p[18]], [0x00, 0x48, 0x61, 0x30]);
        for (i, f) in p.chunks(5).enumerate() {
            assert_eq!(f[0], 0x01);
            assert_eq!(f[1] & 0x81, if i == 0 { 0x81 } else { 0x80 });
            assert_eq!(f[4], f[..4].iter().fold(0u8, |a, b| a.wrapping_add(*b)));
        }
    }

    #[test]
    fn the_cms50_packet_matches_the_constructed_example() {
        let v = SimValues {
            spo2: Some(98),
            pulse: Some(72),
            weight_dg: 0,
            fat_permille: 0,
        };
        assert_eq!(cms50(&v), [0x85, 0x3C, 0x08, 0x48, 0x62]);
    }

    #[test]
    fn every_format_has_a_name_that_parses_back() {
        for (name, f) in SimFormat::ALL {
            assert_eq!(name.parse::<SimFormat>().unwrap(), *f);
            assert_eq!(f.name(), *name);
        }
        assert!("nope".parse::<SimFormat>().is_err());
    }

    #[test]
    fn a_tanita_line_has_38_fields() {
        let mut s = SerialSim::new(SimFormat::TanitaBc418, 1);
        let line = String::from_utf8(s.next_message(noon())).unwrap();
        assert_eq!(line.trim_end().split(',').count(), 38);
        assert!(line.starts_with("\"15/03/24\",\"10:42\","), "{line}");
    }
}

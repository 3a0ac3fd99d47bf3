//! Property tests of the BLE decoders: a small encoder (written here from the SIG layouts,
//! independent of the decoders) builds a random valid value for **every** flag byte
//! (0..=255, reserved bits included), the decoder reads it back, and values, precision
//! (the SFLOAT/FLOAT exponent), units, time stamps, status bits and anomalies must match.
//! Every strictly shorter prefix of each encoded value must be rejected as truncated.

use chrono::NaiveDate;
use iomt_drivers::ble::blood_pressure::{BloodPressureStatus, PressureUnit};
use iomt_drivers::ble::glucose::{GlucoseStatus, GlucoseUnit, SampleLocation, SampleType};
use iomt_drivers::ble::heart_rate::SensorContact;
use iomt_drivers::ble::plx::{PlxDeviceStatus, PlxMeasurementStatus};
use iomt_drivers::ble::temperature::{TemperatureType, TemperatureUnit};
use iomt_drivers::ble::weight::UnitSystem;
use iomt_drivers::ble::{
    self, Anomaly, BloodPressureMeasurement, CgmMeasurement, CurrentTime, FinalMeasurement,
    GattDateTime, GattError, GlucoseContext, GlucoseMeasurement, HeartRateMeasurement,
    IntermediateCuffPressure, PlxContinuousMeasurement, PlxSpotCheckMeasurement, SessionStartTime,
    TemperatureMeasurement, UserId, WeightMeasurement,
};
use iomt_drivers::{AbsentReason, DeviceTime, Measurement, ReadingFlag};
use proptest::prelude::*;
use rust_decimal::Decimal;

// ---- the encoder -------------------------------------------------------------------

/// A value an SFLOAT or FLOAT can carry: a number (mantissa, exponent) or a special.
#[derive(Debug, Clone, Copy)]
enum F {
    Num(i32, i8),
    Special(AbsentReason),
}

impl F {
    /// What the decoder must return.
    fn expected(self) -> Measurement {
        match self {
            F::Num(m, e) if e <= 0 => {
                Measurement::Value(Decimal::new(i64::from(m), u32::from(e.unsigned_abs())))
            }
            F::Num(m, e) => {
                let mut v = Decimal::from(m);
                for _ in 0..e {
                    v *= Decimal::TEN;
                }
                Measurement::Value(v)
            }
            F::Special(r) => Measurement::Absent(r),
        }
    }

    fn sfloat(self) -> [u8; 2] {
        let raw: u16 = match self {
            F::Num(m, e) => ((e as u16 & 0x0F) << 12) | (m as u16 & 0x0FFF),
            F::Special(AbsentReason::NotANumber) => 0x07FF,
            F::Special(AbsentReason::NotAtThisResolution) => 0x0800,
            F::Special(AbsentReason::PositiveInfinity) => 0x07FE,
            F::Special(AbsentReason::NegativeInfinity) => 0x0802,
            F::Special(AbsentReason::Reserved) => 0x0801,
            F::Special(AbsentReason::Unsupported) => unreachable!("GATT has no encoding for it"),
        };
        raw.to_le_bytes()
    }

    fn float(self) -> [u8; 4] {
        let raw: u32 = match self {
            F::Num(m, e) => ((e as u8 as u32) << 24) | (m as u32 & 0x00FF_FFFF),
            F::Special(AbsentReason::NotANumber) => 0x007F_FFFF,
            F::Special(AbsentReason::NotAtThisResolution) => 0x0080_0000,
            F::Special(AbsentReason::PositiveInfinity) => 0x007F_FFFE,
            F::Special(AbsentReason::NegativeInfinity) => 0x0080_0002,
            F::Special(AbsentReason::Reserved) => 0x0080_0001,
            F::Special(AbsentReason::Unsupported) => unreachable!("GATT has no encoding for it"),
        };
        raw.to_le_bytes()
    }
}

fn special() -> impl Strategy<Value = F> {
    prop_oneof![
        Just(AbsentReason::NotANumber),
        Just(AbsentReason::NotAtThisResolution),
        Just(AbsentReason::PositiveInfinity),
        Just(AbsentReason::NegativeInfinity),
        Just(AbsentReason::Reserved),
    ]
    .prop_map(F::Special)
}

/// A valid SFLOAT: the usable mantissa range ±2045, any exponent; sometimes a special.
fn sfloat() -> impl Strategy<Value = F> {
    prop_oneof![
        9 => (-2045i32..=2045, -8i8..=7).prop_map(|(m, e)| F::Num(m, e)),
        1 => special(),
    ]
}

/// A valid FLOAT: the usable mantissa range ±8 388 605, exponents a decimal can hold.
fn float() -> impl Strategy<Value = F> {
    prop_oneof![
        9 => (-8_388_605i32..=8_388_605, -28i8..=20).prop_map(|(m, e)| F::Num(m, e)),
        1 => special(),
    ]
}

/// A valid, fully known Date Time.
fn date_time() -> impl Strategy<Value = GattDateTime> {
    (
        1582u16..=9999,
        1u8..=12,
        1u8..=31,
        0u8..=23,
        0u8..=59,
        0u8..=59,
    )
        .prop_map(|(year, month, day, hours, minutes, seconds)| {
            // Clamp the day to the month's length.
            let mut day = day;
            while NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
                .is_none()
            {
                day -= 1;
            }
            GattDateTime {
                year,
                month,
                day,
                hours,
                minutes,
                seconds,
            }
        })
}

fn naive(t: GattDateTime) -> DeviceTime {
    DeviceTime::Local(t.to_naive().unwrap())
}

/// Same value **and** same precision.
fn assert_same(actual: Measurement, expected: Measurement) {
    assert_eq!(actual, expected);
    if let (Measurement::Value(a), Measurement::Value(e)) = (actual, expected) {
        assert_eq!(a.scale(), e.scale(), "precision of {a} vs {e}");
    }
}

/// The anomaly a decoder must report for set reserved bits.
fn reserved(bits: u8) -> Vec<Anomaly> {
    if bits == 0 {
        vec![]
    } else {
        vec![Anomaly::ReservedFlags {
            bits: u32::from(bits),
        }]
    }
}

fn all_flags() -> impl Iterator<Item = u8> {
    0..=u8::MAX
}

/// Every strictly shorter prefix is rejected as truncated, never a panic.
fn every_prefix_is_truncated<T: std::fmt::Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, GattError>,
) {
    for n in 0..bytes.len() {
        assert!(
            matches!(decode(&bytes[..n]), Err(GattError::Truncated { .. })),
            "prefix of {n} bytes of {bytes:02X?}"
        );
    }
}

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

// ---- the properties ----------------------------------------------------------------

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn every_sfloat_and_float_decodes_to_its_value_with_its_precision(s in sfloat(), f in float()) {
        assert_same(ble::float::sfloat(u16::from_le_bytes(s.sfloat())).measurement, s.expected());
        assert_same(ble::float::float(u32::from_le_bytes(f.float())).unwrap().measurement, f.expected());
    }

    #[test]
    fn heart_rate_round_trips_for_every_flag_byte(
        hr in any::<u16>(),
        ee in any::<u16>(),
        rr in proptest::collection::vec(any::<u16>(), 1..8),
    ) {
        for flags in all_flags() {
            let mut b = vec![flags];
            let hr = if flags & 0x01 != 0 { b.extend(hr.to_le_bytes()); hr } else { b.push(hr as u8); u16::from(hr as u8) };
            if flags & 0x08 != 0 { b.extend(ee.to_le_bytes()); }
            if flags & 0x10 != 0 { for r in &rr { b.extend(r.to_le_bytes()); } }
            let m = HeartRateMeasurement::decode(&b).unwrap();
            prop_assert_eq!(m.heart_rate, hr);
            prop_assert_eq!(m.sensor_contact, match (flags >> 1) & 3 { 2 => SensorContact::NotDetected, 3 => SensorContact::Detected, _ => SensorContact::NotSupported });
            prop_assert_eq!(m.energy_expended_kj, (flags & 0x08 != 0).then_some(ee));
            prop_assert_eq!(&m.rr_intervals, &if flags & 0x10 != 0 { rr.clone() } else { vec![] });
            prop_assert_eq!(&m.anomalies, &reserved(flags & 0xE0));
            // Without RR intervals the layout is fixed, so any shorter prefix is truncated.
            if flags & 0x10 == 0 { every_prefix_is_truncated(&b, HeartRateMeasurement::decode); }
        }
    }

    #[test]
    fn blood_pressure_and_cuff_pressure_round_trip_for_every_flag_byte(
        sys in sfloat(), dia in sfloat(), map in sfloat(), ts in date_time(), pulse in sfloat(),
        user in any::<u8>(), status in any::<u16>(),
    ) {
        for flags in all_flags() {
            let mut b = vec![flags];
            b.extend(sys.sfloat()); b.extend(dia.sfloat()); b.extend(map.sfloat());
            if flags & 0x02 != 0 { b.extend(ts.to_bytes()); }
            if flags & 0x04 != 0 { b.extend(pulse.sfloat()); }
            if flags & 0x08 != 0 { b.push(user); }
            if flags & 0x10 != 0 { b.extend(status.to_le_bytes()); }
            let m = BloodPressureMeasurement::decode(&b).unwrap();
            let unit = if flags & 1 != 0 { PressureUnit::KPa } else { PressureUnit::MmHg };
            prop_assert_eq!(m.unit, unit);
            assert_same(m.systolic, sys.expected());
            assert_same(m.diastolic, dia.expected());
            assert_same(m.mean_arterial, map.expected());
            prop_assert_eq!(m.device_time(), (flags & 0x02 != 0).then(|| naive(ts)));
            match m.pulse_rate { Some(p) => assert_same(p, pulse.expected()), None => prop_assert!(flags & 0x04 == 0) }
            prop_assert_eq!(m.user_id, (flags & 0x08 != 0).then_some(if user == 0xFF { UserId::Unknown } else { UserId::Known(user) }));
            prop_assert_eq!(m.status, (flags & 0x10 != 0).then_some(BloodPressureStatus(status)));
            prop_assert_eq!(&m.anomalies, &reserved(flags & 0xE0));
            for q in m.quantities().iter().filter(|q| q.name != "pulse_rate") {
                prop_assert_eq!(q.unit.as_str(), unit.ucum());
            }
            every_prefix_is_truncated(&b, BloodPressureMeasurement::decode);

            let icp = IntermediateCuffPressure::decode(&b).unwrap();
            assert_same(icp.cuff_pressure, sys.expected());
            prop_assert_eq!(icp.unit, unit);
        }
    }

    #[test]
    fn temperature_round_trips_for_every_flag_byte(t in float(), ts in date_time(), site in 1u8..=9) {
        for flags in all_flags() {
            let mut b = vec![flags];
            b.extend(t.float());
            if flags & 0x02 != 0 { b.extend(ts.to_bytes()); }
            if flags & 0x04 != 0 { b.push(site); }
            let m = TemperatureMeasurement::decode(&b).unwrap();
            prop_assert_eq!(m.unit, if flags & 1 != 0 { TemperatureUnit::Fahrenheit } else { TemperatureUnit::Celsius });
            assert_same(m.temperature, t.expected());
            prop_assert_eq!(m.device_time(), (flags & 0x02 != 0).then(|| naive(ts)));
            prop_assert_eq!(m.temperature_type, (flags & 0x04 != 0).then(|| TemperatureType::from_code(site)));
            prop_assert_eq!(&m.anomalies, &reserved(flags & 0xF8));
            prop_assert_eq!(m.quantities()[0].unit.clone(), if flags & 1 != 0 { "[degF]" } else { "Cel" });
            every_prefix_is_truncated(&b, TemperatureMeasurement::decode);
        }
    }

    #[test]
    fn weight_round_trips_for_every_flag_byte(
        w in 0u16..0xFFFF, ts in date_time(), user in any::<u8>(), bmi in any::<u16>(), h in any::<u16>(),
    ) {
        for flags in all_flags() {
            let mut b = vec![flags];
            b.extend(w.to_le_bytes());
            if flags & 0x02 != 0 { b.extend(ts.to_bytes()); }
            if flags & 0x04 != 0 { b.push(user); }
            if flags & 0x08 != 0 { b.extend(bmi.to_le_bytes()); b.extend(h.to_le_bytes()); }
            let m = WeightMeasurement::decode(&b).unwrap();
            let imperial = flags & 1 != 0;
            prop_assert_eq!(m.units, if imperial { UnitSystem::Imperial } else { UnitSystem::Si });
            // 0.005 kg steps (3 decimals) or 0.01 lb steps (2 decimals).
            let expected = if imperial { Decimal::new(i64::from(w), 2) } else { Decimal::new(i64::from(w) * 5, 3) };
            assert_same(m.weight, Measurement::Value(expected));
            prop_assert_eq!(m.device_time(), (flags & 0x02 != 0).then(|| naive(ts)));
            prop_assert_eq!(m.user_id.is_some(), flags & 0x04 != 0);
            if flags & 0x08 != 0 {
                prop_assert_eq!(m.bmi.unwrap(), Decimal::new(i64::from(bmi), 1));
                let hd = m.height.unwrap();
                prop_assert_eq!(hd, Decimal::new(i64::from(h), if imperial { 1 } else { 3 }));
                prop_assert_eq!(hd.scale(), if imperial { 1 } else { 3 });
                let names: Vec<_> = m.quantities().into_iter().map(|q| q.unit).collect();
                prop_assert_eq!(names, if imperial { ["[lb_av]", "kg/m2", "[in_i]"] } else { ["kg", "kg/m2", "m"] });
            } else {
                prop_assert_eq!((m.bmi, m.height), (None, None));
            }
            prop_assert_eq!(&m.anomalies, &reserved(flags & 0xF0));
            every_prefix_is_truncated(&b, WeightMeasurement::decode);
        }
    }

    #[test]
    fn plx_spot_check_round_trips_for_every_flag_byte(
        spo2 in sfloat(), pr in sfloat(), ts in date_time(), status in any::<u16>(),
        ds in 0u32..(1 << 24), pai in sfloat(),
    ) {
        for flags in all_flags() {
            let mut b = vec![flags];
            b.extend(spo2.sfloat()); b.extend(pr.sfloat());
            if flags & 0x01 != 0 { b.extend(ts.to_bytes()); }
            if flags & 0x02 != 0 { b.extend(status.to_le_bytes()); }
            if flags & 0x04 != 0 { b.extend(&ds.to_le_bytes()[..3]); }
            if flags & 0x08 != 0 { b.extend(pai.sfloat()); }
            let m = PlxSpotCheckMeasurement::decode(&b).unwrap();
            assert_same(m.value.spo2, spo2.expected());
            assert_same(m.value.pulse_rate, pr.expected());
            prop_assert_eq!(m.device_time(), (flags & 0x01 != 0).then(|| naive(ts)));
            prop_assert_eq!(m.measurement_status, (flags & 0x02 != 0).then_some(PlxMeasurementStatus(status)));
            prop_assert_eq!(m.device_status, (flags & 0x04 != 0).then_some(PlxDeviceStatus(ds)));
            match m.pulse_amplitude_index { Some(p) => assert_same(p, pai.expected()), None => prop_assert!(flags & 0x08 == 0) }
            prop_assert_eq!(m.clock_not_set, flags & 0x10 != 0);
            prop_assert_eq!(m.flags().contains(&ReadingFlag::ClockNotSet), flags & 0x10 != 0);
            let stored = flags & 0x02 != 0 && status & 0x0200 != 0;
            prop_assert_eq!(m.flags().contains(&ReadingFlag::FromStorage), stored);
            prop_assert_eq!(&m.anomalies, &reserved(flags & 0xE0));
            every_prefix_is_truncated(&b, PlxSpotCheckMeasurement::decode);
        }
    }

    #[test]
    fn plx_continuous_round_trips_for_every_flag_byte(
        v in proptest::array::uniform6(sfloat()), status in any::<u16>(), ds in 0u32..(1 << 24), pai in sfloat(),
    ) {
        for flags in all_flags() {
            let mut b = vec![flags];
            b.extend(v[0].sfloat()); b.extend(v[1].sfloat());
            if flags & 0x01 != 0 { b.extend(v[2].sfloat()); b.extend(v[3].sfloat()); }
            if flags & 0x02 != 0 { b.extend(v[4].sfloat()); b.extend(v[5].sfloat()); }
            if flags & 0x04 != 0 { b.extend(status.to_le_bytes()); }
            if flags & 0x08 != 0 { b.extend(&ds.to_le_bytes()[..3]); }
            if flags & 0x10 != 0 { b.extend(pai.sfloat()); }
            let m = PlxContinuousMeasurement::decode(&b).unwrap();
            assert_same(m.normal.spo2, v[0].expected());
            assert_same(m.normal.pulse_rate, v[1].expected());
            match m.fast { Some(p) => { assert_same(p.spo2, v[2].expected()); assert_same(p.pulse_rate, v[3].expected()); } None => prop_assert!(flags & 0x01 == 0) }
            match m.slow { Some(p) => { assert_same(p.spo2, v[4].expected()); assert_same(p.pulse_rate, v[5].expected()); } None => prop_assert!(flags & 0x02 == 0) }
            prop_assert_eq!(m.measurement_status, (flags & 0x04 != 0).then_some(PlxMeasurementStatus(status)));
            prop_assert_eq!(m.device_status, (flags & 0x08 != 0).then_some(PlxDeviceStatus(ds)));
            match m.pulse_amplitude_index { Some(p) => assert_same(p, pai.expected()), None => prop_assert!(flags & 0x10 == 0) }
            prop_assert_eq!(&m.anomalies, &reserved(flags & 0xE0));
            every_prefix_is_truncated(&b, PlxContinuousMeasurement::decode);
        }
    }

    #[test]
    fn glucose_round_trips_for_every_flag_byte(
        seq in any::<u16>(), ts in date_time(), offset in any::<i16>(), c in sfloat(),
        sample in 1u8..=9, location in 1u8..=3, status in 0u16..0x1000,
    ) {
        for flags in all_flags() {
            let mut b = vec![flags];
            b.extend(seq.to_le_bytes());
            b.extend(ts.to_bytes());
            if flags & 0x01 != 0 { b.extend(offset.to_le_bytes()); }
            if flags & 0x02 != 0 { b.extend(c.sfloat()); b.push(location << 4 | sample); }
            if flags & 0x08 != 0 { b.extend(status.to_le_bytes()); }
            let m = GlucoseMeasurement::decode(&b).unwrap();
            prop_assert_eq!(m.sequence, seq);
            prop_assert_eq!(m.sequence(), Some(u64::from(seq)));
            prop_assert_eq!(m.base_time, ts);
            let minutes = if flags & 0x01 != 0 { offset } else { 0 };
            let expected_time = ts
                .to_naive()
                .unwrap()
                .checked_add_signed(chrono::Duration::minutes(i64::from(minutes)))
                .map(DeviceTime::Local);
            prop_assert_eq!(m.device_time(), expected_time);
            if flags & 0x02 != 0 {
                let conc = m.concentration.unwrap();
                assert_same(conc.value, c.expected());
                prop_assert_eq!(conc.unit, if flags & 0x04 != 0 { GlucoseUnit::MolPerL } else { GlucoseUnit::KgPerL });
                prop_assert_eq!(conc.sample_type, SampleType::from_code(sample));
                prop_assert_eq!(conc.location, SampleLocation::from_code(location));
                prop_assert_eq!(m.quantities()[0].unit.clone(), conc.unit.ucum());
            } else {
                prop_assert!(m.concentration.is_none() && m.quantities().is_empty());
            }
            prop_assert_eq!(m.status, (flags & 0x08 != 0).then_some(GlucoseStatus(status)));
            prop_assert_eq!(m.context_follows, flags & 0x10 != 0);
            prop_assert_eq!(&m.anomalies, &reserved(flags & 0xE0));
            every_prefix_is_truncated(&b, GlucoseMeasurement::decode);
        }
    }

    #[test]
    fn glucose_context_round_trips_for_every_flag_byte(
        seq in any::<u16>(), carb_id in any::<u8>(), carb in sfloat(), meal in 1u8..=5, th in any::<u8>(),
        ex in any::<u16>(), intensity in any::<u8>(), med_id in any::<u8>(), med in sfloat(), a1c in sfloat(),
    ) {
        for flags in all_flags() {
            let mut b = vec![flags];
            b.extend(seq.to_le_bytes());
            if flags & 0x80 != 0 { b.push(0); }
            if flags & 0x01 != 0 { b.push(carb_id); b.extend(carb.sfloat()); }
            if flags & 0x02 != 0 { b.push(meal); }
            if flags & 0x04 != 0 { b.push(th); }
            if flags & 0x08 != 0 { b.extend(ex.to_le_bytes()); b.push(intensity); }
            if flags & 0x10 != 0 { b.push(med_id); b.extend(med.sfloat()); }
            if flags & 0x40 != 0 { b.extend(a1c.sfloat()); }
            let m = GlucoseContext::decode(&b).unwrap();
            prop_assert_eq!(m.sequence, seq);
            prop_assert_eq!(m.extended_flags, (flags & 0x80 != 0).then_some(0));
            match m.carbohydrate { Some((id, v)) => { prop_assert_eq!(id, carb_id); assert_same(v, carb.expected()); } None => prop_assert!(flags & 0x01 == 0) }
            prop_assert_eq!(m.meal.is_some(), flags & 0x02 != 0);
            prop_assert_eq!(m.tester_health, (flags & 0x04 != 0).then_some((th & 0x0F, th >> 4)));
            prop_assert_eq!(m.exercise, (flags & 0x08 != 0).then_some((ex, intensity)));
            match m.medication { Some((id, v, _)) => { prop_assert_eq!(id, med_id); assert_same(v, med.expected()); } None => prop_assert!(flags & 0x10 == 0) }
            match m.hba1c { Some(v) => assert_same(v, a1c.expected()), None => prop_assert!(flags & 0x40 == 0) }
            prop_assert!(m.anomalies.is_empty());
            every_prefix_is_truncated(&b, GlucoseContext::decode);
        }
    }

    #[test]
    fn a_valid_date_time_round_trips(ts in date_time()) {
        prop_assert_eq!(GattDateTime::decode(&ts.to_bytes()).unwrap(), ts);
    }

    #[test]
    fn current_time_round_trips_with_its_fractions_and_adjust_reason(
        ts in date_time(), dow in 0u8..=7, fractions in any::<u8>(), adjust in 0u8..=15,
    ) {
        let mut b = ts.to_bytes().to_vec();
        b.extend([dow, fractions, adjust]);
        let t = CurrentTime::decode(&b).unwrap();
        prop_assert_eq!(t.date_time, ts);
        prop_assert_eq!((t.day_of_week, t.fractions256, t.adjust_reason), (dow, fractions, adjust));
        prop_assert!(t.anomalies.is_empty());
        let now = t.device_now().unwrap();
        // Independently: whole seconds from the Date Time, plus fractions/256 s.
        let expected = ts.to_naive().unwrap()
            + chrono::Duration::nanoseconds(i64::from(fractions) * 1_000_000_000 / 256);
        prop_assert_eq!(now, expected);
        // What the gateway writes decodes to the same instant.
        let written = CurrentTime::encode(now).unwrap();
        prop_assert_eq!(CurrentTime::decode(&written).unwrap().device_now().unwrap(), now);
        every_prefix_is_truncated(&b, CurrentTime::decode);
    }

    #[test]
    fn cgm_round_trips_for_every_flag_byte_with_and_without_crc(
        g in sfloat(), offset in any::<u16>(), oct in any::<[u8; 3]>(), trend in sfloat(), quality in sfloat(),
        flip in 0usize..64,
    ) {
        for flags in all_flags() {
            let mut body = vec![flags];
            body.extend(g.sfloat());
            body.extend(offset.to_le_bytes());
            if flags & 0x20 != 0 { body.push(oct[0]); }
            if flags & 0x40 != 0 { body.push(oct[1]); }
            if flags & 0x80 != 0 { body.push(oct[2]); }
            if flags & 0x01 != 0 { body.extend(trend.sfloat()); }
            if flags & 0x02 != 0 { body.extend(quality.sfloat()); }
            for crc in [false, true] {
                let size = body.len() + 1 + if crc { 2 } else { 0 };
                let mut b = vec![u8::try_from(size).unwrap()];
                b.extend(&body);
                if crc { let c = mcrf4xx(&b); b.extend(c.to_le_bytes()); }
                let m = CgmMeasurement::decode_checked(&b, crc).unwrap();
                assert_same(m.glucose, g.expected());
                prop_assert_eq!(m.time_offset_minutes, offset);
                prop_assert_eq!(m.sequence(), Some(u64::from(offset)));
                prop_assert_eq!(m.status.warning, (flags & 0x20 != 0).then_some(oct[0]));
                prop_assert_eq!(m.status.cal_temp, (flags & 0x40 != 0).then_some(oct[1]));
                prop_assert_eq!(m.status.status, (flags & 0x80 != 0).then_some(oct[2]));
                match m.trend { Some(t) => assert_same(t, trend.expected()), None => prop_assert!(flags & 0x01 == 0) }
                match m.quality { Some(q) => assert_same(q, quality.expected()), None => prop_assert!(flags & 0x02 == 0) }
                prop_assert_eq!(m.quantities().len(), 1 + usize::from(flags & 0x01) + usize::from(flags & 0x02 != 0));
                prop_assert_eq!(m.e2e_crc.is_some(), crc);
                prop_assert_eq!(&m.anomalies, &reserved(flags & 0x1C));
                prop_assert_eq!(m.device_time(), None);
                every_prefix_is_truncated(&b, CgmMeasurement::decode);
                if crc {
                                        let bit = flip % ((b.len() - 1) * 8);
                    let mut bad = b.clone();
                    bad[1 + bit / 8] ^= 1 << (bit % 8);
                    // With CGM Feature saying E2E-CRC, a flipped bit never passes: a flipped flag
                    // bit changes the layout, so the record is mis-sized or lacks its CRC.
                    let err = CgmMeasurement::decode_checked(&bad, true).unwrap_err();
                    if bit >= 8 {
                        prop_assert!(err.to_string().contains("E2E-CRC mismatch"), "{}", err);
                    }
                } else {
                    prop_assert!(CgmMeasurement::decode_checked(&b, true).is_err());
                }
            }
        }
    }

    #[test]
    fn cgm_session_start_places_every_offset(
        ts in date_time(), zone in -48i8..=56, dst in prop::sample::select(vec![0u8, 2, 4, 8]), offset in any::<u16>(),
    ) {
        let mut b = ts.to_bytes().to_vec();
        b.push(zone.to_le_bytes()[0]);
        b.push(dst);
        let start = SessionStartTime::decode(&b).unwrap();
        let dst_min = match dst { 0 => 0, 2 => 30, 4 => 60, _ => 120 };
        let tz = chrono::FixedOffset::east_opt((i32::from(zone) * 15 + dst_min) * 60).unwrap();
        let local = ts.to_naive().unwrap() + chrono::Duration::minutes(i64::from(offset));
        prop_assert_eq!(start.time_at(offset), local.and_local_timezone(tz).single().map(DeviceTime::Zoned));
        every_prefix_is_truncated(&b, SessionStartTime::decode);
    }
}

/// CRC-16/MCRF4XX bit by bit (reflected 0x1021, seed 0xFFFF), written from the CGM
/// specification's description, independent of the decoder's table.
fn mcrf4xx(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x8408
            } else {
                crc >> 1
            };
        }
    }
    crc
}

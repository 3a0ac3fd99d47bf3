//! The registry's own consistency, and each decoder's dispatch.

use super::*;

#[test]
fn uuids_and_profile_decoder_names_are_unique() {
    for (i, a) in REGISTRY.iter().enumerate() {
        for b in &REGISTRY[i + 1..] {
            assert_ne!(a.uuid16, b.uuid16, "{a:?} {b:?}");
            if a.profile_decoder.is_some() {
                assert_ne!(a.profile_decoder, b.profile_decoder, "{a:?} {b:?}");
            }
        }
    }
}

#[test]
fn each_entry_is_the_entry_of_its_characteristic() {
    for e in REGISTRY {
        assert_eq!(e.characteristic.entry().uuid16, e.uuid16);
    }
}

#[test]
fn only_final_measurements_produce_fields_and_profiles_name_only_those() {
    for e in REGISTRY {
        assert_eq!(e.final_measurement, !e.fields.is_empty(), "{e:?}");
        if e.profile_decoder.is_some() {
            assert!(e.final_measurement, "{e:?}");
        }
    }
}

/// A value of each characteristic that its decoder accepts (the test vectors of the
/// decoders' own tests).
fn sample(c: Characteristic) -> &'static [u8] {
    match c {
        Characteristic::HeartRateMeasurement => &[0x1E, 0x55, 0x32, 0x00, 0x21, 0x00],
        Characteristic::BloodPressureMeasurement => &[
            0x1E, 0x8A, 0x00, 0x58, 0x00, 0x78, 0x00, 0x00, 0x00, 0x04, 0x11, 0x14, 0x29, 0x3B,
            0x3C, 0x00, 0x01, 0x27, 0x00,
        ],
        Characteristic::IntermediateCuffPressure => &[0x00, 0xD7, 0xF0, 0x00, 0x00, 0x00, 0x00],
        Characteristic::TemperatureMeasurement => &[
            0x06, 0xB0, 0x0E, 0x00, 0xFE, 0xDC, 0x07, 0x0C, 0x05, 0x0B, 0x32, 0x1B, 0x04,
        ],
        Characteristic::IntermediateTemperature => &[0x00, 0xC4, 0x09, 0x00, 0xFE],
        Characteristic::WeightMeasurement => &[0x08, 0xB0, 0x36, 0xE5, 0x00, 0xD6, 0x06],
        Characteristic::BodyCompositionMeasurement => &[
            0xFE, 0x0F, 0xD6, 0x00, 0xE7, 0x07, 0x0C, 0x19, 0x0E, 0x1E, 0x2D, 0x02, 0x80, 0x1C,
            0xB6, 0x01, 0x20, 0x1A, 0x40, 0x2B, 0x30, 0x27, 0x70, 0x1F, 0x88, 0x13, 0xB0, 0x36,
            0xD6, 0x06,
        ],
        Characteristic::PlxSpotCheckMeasurement => &[
            0x0F, 0xAC, 0xF3, 0xBE, 0xF5, 0xE8, 0x07, 0x0B, 0x1D, 0x17, 0x08, 0x39, 0x20, 0x40,
            0x22, 0x00, 0x00, 0x66, 0xE3,
        ],
        Characteristic::PlxContinuousMeasurement => &[0x00, 0x64, 0x00, 0x5A, 0x00],
        Characteristic::GlucoseMeasurement => &[
            0x03, 0x05, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x00, 0x00, 0x64, 0xB0,
            0x11,
        ],
        Characteristic::GlucoseMeasurementContext => &[0x00, 0x05, 0x00],
        Characteristic::CgmMeasurement => &[
            0x0F, 0xE3, 0xD2, 0xE4, 0x05, 0x00, 0x02, 0x14, 0xFF, 0x02, 0xF0, 0xE5, 0xF3, 0x8E,
            0x3F,
        ],
        Characteristic::CgmFeature => &[0x00, 0x00, 0x00, 0x59, 0xFF, 0xFF],
        Characteristic::CgmSessionStartTime => &[0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 4, 2],
        Characteristic::CgmSessionRunTime => &[0x50, 0x01],
        Characteristic::BatteryLevel => &[0x55],
        Characteristic::DateTime => &[0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00],
        Characteristic::CurrentTime => &[0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 5, 0, 0],
        _ => b"ACME",
    }
}

#[test]
fn every_decoder_dispatches_to_its_own_characteristic_and_finality() {
    for e in REGISTRY {
        let v =
            decode(e.uuid16, sample(e.characteristic)).unwrap_or_else(|err| panic!("{e:?}: {err}"));
        assert_eq!(v.as_final().is_some(), e.final_measurement, "{e:?}");
        if let Some(m) = v.as_final() {
            assert_eq!(m.characteristic(), e.characteristic);
            let names: Vec<String> = m.quantities().into_iter().map(|q| q.name).collect();
            let listed: Vec<&str> = e.fields.iter().map(|f| f.name).collect();
            assert_eq!(names, listed, "{e:?}");
        }
        if let GattValue::DeviceString(c, _) = v {
            assert_eq!(c, e.characteristic);
        }
    }
}

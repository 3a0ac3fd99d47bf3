use super::*;
use crate::ble::test_support::local;

fn value(m: &GlucoseMeasurement) -> String {
    m.concentration.unwrap().value.value().unwrap().to_string()
}

#[test]
fn negative_time_offset_status_and_context_follows() {
    let m = GlucoseMeasurement::decode(&[
        0x1B, 0x01, 0x00, 0xE3, 0x07, 0x02, 0x1B, 0x0B, 0x0A, 0x1E, 0xFB, 0xFF, 0x1E, 0x00, 0x12,
        0x05, 0x01,
    ])
    .unwrap();
    assert_eq!(m.sequence, 1);
    assert_eq!(m.time_offset_minutes, Some(-5));
    assert_eq!(m.device_time(), local(2019, 2, 27, 11, 5, 30));
    let c = m.concentration.unwrap();
    assert_eq!(value(&m), "30");
    assert_eq!(c.unit, GlucoseUnit::KgPerL);
    assert_eq!(c.sample_type, SampleType::CapillaryPlasma);
    assert_eq!(c.location, SampleLocation::Finger);
    let s = m.status.unwrap();
    assert_eq!(s.0, 0x0105);
    assert!(s.battery_low() && s.sample_size_insufficient() && s.temperature_too_low());
    assert!(!s.general_device_fault() && !s.result_too_high());
    assert!(m.context_follows);
    assert_eq!(m.sequence(), Some(1));
}

#[test]
fn a_measurement_missing_its_flagged_time_offset_is_truncated() {
    assert_eq!(
        GlucoseMeasurement::decode(&[
            0x1B, 0x00, 0x00, 0xE2, 0x07, 0x04, 0x1A, 0x0B, 0x09, 0x1E, 0x1E, 0x00, 0x12, 0x05,
            0x01
        ]),
        Err(GattError::Truncated {
            characteristic: Characteristic::GlucoseMeasurement,
            len: 15,
            required: 17
        })
    );
}

#[test]
fn a_measurement_without_concentration_has_no_quantity() {
    let m =
        GlucoseMeasurement::decode(&[0x00, 0x01, 0x00, 0xE4, 0x07, 0x05, 0x15, 0x0A, 0x1E, 0x2D])
            .unwrap();
    assert_eq!(m.sequence, 1);
    assert_eq!(m.device_time(), local(2020, 5, 21, 10, 30, 45));
    assert!(m.quantities().is_empty());
}

#[test]
fn mol_per_litre_flag_with_venous_plasma_and_context_follows() {
    let m = GlucoseMeasurement::decode(&[
        0x1F, 0x02, 0x00, 0xE4, 0x07, 0x05, 0x15, 0x0A, 0x1E, 0x2D, 0x00, 0x00, 0x51, 0x00, 0x14,
        0x06, 0x00,
    ])
    .unwrap();
    assert_eq!(m.sequence, 2);
    assert_eq!(m.time_offset_minutes, Some(0));
    let c = m.concentration.unwrap();
    assert_eq!(value(&m), "81");
    assert_eq!(c.unit, GlucoseUnit::MolPerL);
    assert_eq!(c.sample_type, SampleType::VenousPlasma);
    assert_eq!(c.location, SampleLocation::Finger);
    assert_eq!(m.status, Some(GlucoseStatus(0x0006)));
    assert!(m.context_follows);
}

#[test]
fn one_hundred_milligrams_per_decilitre_arrive_as_0_point_00100_kg_per_litre() {
    let m = GlucoseMeasurement::decode(&[
        0x03, 0x05, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x00, 0x00, 0x64, 0xB0, 0x11,
    ])
    .unwrap();
    assert_eq!(m.sequence, 5);
    assert_eq!(m.device_time(), local(2024, 3, 15, 8, 30, 0));
    assert_eq!(value(&m), "0.00100");
    let c = m.concentration.unwrap();
    assert_eq!(c.sample_type, SampleType::CapillaryWholeBlood);
    assert_eq!(c.location, SampleLocation::Finger);
    let q = m.quantities();
    assert_eq!(
        (q[0].name.as_str(), q[0].unit.as_str()),
        ("glucose", "kg/L")
    );
}

#[test]
fn five_point_five_millimoles_arrive_as_0_point_0055_mol_per_litre() {
    let m = GlucoseMeasurement::decode(&[
        0x06, 0x06, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x37, 0xC0, 0x11,
    ])
    .unwrap();
    assert_eq!(m.sequence, 6);
    assert_eq!(value(&m), "0.0055");
    assert_eq!(m.quantities()[0].unit, "mol/L");
    assert_eq!(m.time_offset_minutes, None);
}

#[test]
fn control_solution_by_type_or_location_is_test_data() {
    // type 10, location 1
    let m = GlucoseMeasurement::decode(&[
        0x02, 0x07, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x64, 0xB0, 0x1A,
    ])
    .unwrap();
    assert_eq!(m.flags(), vec![ReadingFlag::TestData]);
    // type 1, location 4
    let m = GlucoseMeasurement::decode(&[
        0x02, 0x07, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x64, 0xB0, 0x41,
    ])
    .unwrap();
    assert_eq!(m.flags(), vec![ReadingFlag::TestData]);
}

#[test]
fn a_time_fault_means_the_clock_is_not_trusted() {
    let m = GlucoseMeasurement::decode(&[
        0x08, 0x07, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x00, 0x08,
    ])
    .unwrap();
    assert!(m.status.unwrap().time_fault());
    assert_eq!(m.flags(), vec![ReadingFlag::ClockNotSet]);
}

#[test]
fn result_high_is_bit_5_and_low_is_bit_6_as_the_sig_says() {
    assert!(GlucoseStatus(0x0020).result_too_high());
    assert!(!GlucoseStatus(0x0020).result_too_low());
    assert!(GlucoseStatus(0x0040).result_too_low());
}

#[test]
fn reserved_sample_codes_and_flag_bits_are_recorded() {
    let m = GlucoseMeasurement::decode(&[
        0x22, 0x07, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x64, 0xB0, 0x50,
    ])
    .unwrap();
    assert_eq!(
        m.anomalies,
        vec![
            Anomaly::ReservedCode {
                field: "sample_type",
                code: 0
            },
            Anomaly::ReservedCode {
                field: "sample_location",
                code: 5
            },
            Anomaly::ReservedFlags { bits: 0x20 }
        ]
    );
}

fn context(seq: u16) -> GlucoseContext {
    // meal postprandial, HbA1c 6.3 %
    let [a, b] = seq.to_le_bytes();
    GlucoseContext::decode(&[0x42, a, b, 0x02, 0x3F, 0xF0]).unwrap()
}

fn measurement(seq: u16, follows: bool) -> GlucoseMeasurement {
    let [a, b] = seq.to_le_bytes();
    let flags = if follows { 0x12 } else { 0x02 };
    GlucoseMeasurement::decode(&[
        flags, a, b, 0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x64, 0xB0, 0x11,
    ])
    .unwrap()
}

#[test]
fn a_context_decodes_every_field_in_bit_order() {
    let c = GlucoseContext::decode(&[
        0xDF, 0x09, 0x00, 0x00, 0x01, 0x32, 0xD0, 0x02, 0x11, 0x2C, 0x01, 0x50, 0x01, 0x64, 0xA0,
        0x3F, 0xF0,
    ])
    .unwrap();
    assert_eq!(c.sequence, 9);
    assert_eq!(c.extended_flags, Some(0));
    let (id, carbs) = c.carbohydrate.unwrap();
    assert_eq!(
        (id, carbs.value().unwrap().to_string()),
        (1, "0.050".into())
    );
    assert_eq!(c.meal, Some(Meal::Postprandial));
    assert_eq!(c.tester_health, Some((1, 1)));
    assert_eq!(c.exercise, Some((300, 80)));
    let (id, amount, unit) = c.medication.unwrap();
    assert_eq!(
        (id, amount.value().unwrap().to_string(), unit),
        (1, "0.000100".into(), MedicationUnit::Kilograms)
    );
    assert_eq!(c.hba1c.unwrap().value().unwrap().to_string(), "6.3");
    assert!(c.anomalies.is_empty());
}

#[test]
fn a_context_shorter_than_its_flags_is_truncated() {
    assert!(matches!(
        GlucoseContext::decode(&[0x40, 0x01, 0x00, 0x3F]),
        Err(GattError::Truncated {
            required: 5,
            len: 4,
            ..
        })
    ));
}

#[test]
fn the_joiner_pairs_a_measurement_with_its_context_by_sequence_number() {
    let mut j = GlucoseJoiner::new(4);
    assert!(j.measurement(measurement(7, true)).is_empty());
    assert!(j.measurement(measurement(8, true)).is_empty());
    let r = j.context(context(8)).unwrap();
    assert_eq!(r.measurement.sequence, 8);
    assert_eq!(r.context.unwrap().meal, Some(Meal::Postprandial));
    assert_eq!(j.waiting(), 1);
}

#[test]
fn a_measurement_without_announced_context_is_complete_at_once() {
    let mut j = GlucoseJoiner::new(4);
    let done = j.measurement(measurement(3, false));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].context, None);
    assert_eq!(j.waiting(), 0);
}

#[test]
fn a_context_without_its_measurement_is_an_orphan() {
    let mut j = GlucoseJoiner::new(4);
    assert_eq!(j.context(context(5)), Err(OrphanContext { sequence: 5 }));
}

#[test]
fn the_joiner_is_bounded_and_releases_the_oldest_without_context() {
    let mut j = GlucoseJoiner::new(2);
    j.measurement(measurement(1, true));
    j.measurement(measurement(2, true));
    let done = j.measurement(measurement(3, true));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].measurement.sequence, 1);
    assert_eq!(j.waiting(), 2);
    let rest = j.flush();
    assert_eq!(
        rest.iter()
            .map(|r| r.measurement.sequence)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(j.waiting(), 0);
}

#[test]
fn a_repeated_sequence_number_releases_the_earlier_measurement() {
    let mut j = GlucoseJoiner::new(4);
    j.measurement(measurement(1, true));
    let done = j.measurement(measurement(1, true));
    assert_eq!(done.len(), 1);
    assert_eq!(j.waiting(), 1);
}

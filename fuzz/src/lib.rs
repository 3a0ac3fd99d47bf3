//! Checks shared by the BLE fuzz targets: beyond "no panic", every accepted value must
//! turn into a consistent reading.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use iomt_drivers::ble::{self, FinalMeasurement, GattValue};
use iomt_drivers::{DeviceIdentity, Transport};

/// Decodes `data` as characteristic `uuid` through the generic entry point, and checks
/// that an accepted value is final exactly when the registry says so, and that a final
/// measurement makes a reading with only its listed fields and units.
pub fn check(uuid: u16, data: &[u8]) {
    let Ok(value) = ble::decode(uuid, data) else {
        return;
    };
    let registered = ble::Characteristic::from_uuid16(uuid).map(|c| c.entry().final_measurement);
    assert_eq!(
        value.as_final().is_some(),
        registered == Some(true),
        "finality of {uuid:#06x}"
    );
    if let Some(m) = value.as_final() {
        check_final(m);
    }
    if let GattValue::IntermediateCuffPressure(_) | GattValue::IntermediateTemperature(_) = value {
        assert!(value.as_final().is_none());
    }
}

/// A final measurement's reading uses only the fields and units [`ble::fields`] lists.
pub fn check_final(m: &dyn FinalMeasurement) {
    let listed = ble::fields(m.characteristic());
    let device = Arc::new(DeviceIdentity {
        revisions: Default::default(),
        profile: "fuzz".into(),
        transport: Transport::Ble,
        address: "fuzz".into(),
        serial_number: None,
        manufacturer: None,
        model: None,
    });
    let received = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let reading = m.to_reading(device, received);
    for q in &reading.quantities {
        let field = listed
            .iter()
            .find(|f| f.name == q.name)
            .unwrap_or_else(|| panic!("unlisted field {}", q.name));
        assert!(field.units.contains(&q.unit.as_str()), "unit {}", q.unit);
    }
}

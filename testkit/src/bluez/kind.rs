//! The kinds of simulated health devices and the GATT services each one offers.

/// The kinds of simulated health devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Blood Pressure service 0x1810 (Blood Pressure Measurement 0x2A35, indicate).
    BloodPressure,
    /// Pulse Oximeter service 0x1822 (PLX Spot-Check 0x2A5E, indicate).
    PulseOximeter,
    /// Glucose service 0x1808 (0x2A18 notify, 0x2A34 notify, RACP 0x2A52 write+indicate).
    Glucose,
    /// Weight Scale service 0x181D (Weight Measurement 0x2A9D, indicate).
    WeightScale,
    /// Heart Rate service 0x180D (Heart Rate Measurement 0x2A37, notify; Body Sensor
    /// Location 0x2A38, read: chest).
    HeartRate,
    /// Continuous Glucose Monitoring 0x181F (0x2AA7 notify; Feature 0x2AA8, Session Start
    /// Time 0x2AAA, Run Time 0x2AAB, read, with E2E-CRC; RACP 0x2A52 write+indicate).
    Cgm,
    /// Body Composition service 0x181B (Body Composition Measurement 0x2A9C, indicate)
    /// beside a Weight Scale service 0x181D (Weight Measurement 0x2A9D, indicate).
    BodyComposition,
}

impl DeviceKind {
    /// The primary service this kind advertises.
    pub fn service(self) -> u16 {
        match self {
            DeviceKind::BloodPressure => 0x1810,
            DeviceKind::PulseOximeter => 0x1822,
            DeviceKind::Glucose => 0x1808,
            DeviceKind::WeightScale => 0x181D,
            DeviceKind::HeartRate => 0x180D,
            DeviceKind::Cgm => 0x181F,
            DeviceKind::BodyComposition => 0x181B,
        }
    }

    pub(super) fn gatt(self) -> Vec<(u16, Vec<CharSpec>)> {
        const IND: &[&str] = &["indicate"];
        const NOT: &[&str] = &["notify"];
        const READ: &[&str] = &["read"];
        let own = match self {
            DeviceKind::BloodPressure => vec![(0x2A35, IND), (0x2A49, READ)],
            DeviceKind::PulseOximeter => vec![(0x2A5E, IND), (0x2A5F, NOT)],
            DeviceKind::Glucose => vec![
                (0x2A18, NOT),
                (0x2A34, NOT),
                (0x2A52, &["write", "indicate"][..]),
            ],
            DeviceKind::WeightScale => vec![(0x2A9D, IND)],
            DeviceKind::HeartRate => vec![(0x2A37, NOT), (0x2A38, READ)],
            DeviceKind::Cgm => vec![
                (0x2AA7, NOT),
                (0x2AA8, READ),
                (0x2AAA, READ),
                (0x2AAB, READ),
                (0x2A52, &["write", "indicate"][..]),
            ],
            DeviceKind::BodyComposition => vec![(0x2A9C, IND)],
        };
        let mut services = vec![
            (
                0x180A,
                vec![
                    (0x2A29, READ),
                    (0x2A24, READ),
                    (0x2A25, READ),
                    (0x2A26, READ),
                    (0x2A28, READ),
                ],
            ),
            (0x180F, vec![(0x2A19, &["read", "notify"][..])]),
            (self.service(), own),
        ];
        if self == DeviceKind::BodyComposition {
            services.push((0x181D, vec![(0x2A9D, IND)]));
        }
        services
    }
}

/// A characteristic: 16-bit UUID and BlueZ flags.
type CharSpec = (u16, &'static [&'static str]);

/// The 128-bit form of a 16-bit SIG UUID.
pub fn uuid16(u: u16) -> String {
    format!("0000{u:04x}-0000-1000-8000-00805f9b34fb")
}

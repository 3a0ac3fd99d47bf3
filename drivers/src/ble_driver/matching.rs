//! The one rule that says whether an advertisement is a profile's device: used by the
//! driver (with the allow-list) and by `iomt-gateway scan`, so both always agree.
//!
//! A profile recognizes a device by an advertised service UUID in common with its
//! `services`, **or** by the advertised local name starting with its `name_prefix`. Many
//! cuffs advertise only their name and a vendor service until paired, so a discovery
//! filter made of the profiles' service UUIDs would hide them: BlueZ reports only
//! devices advertising one of a filter's UUIDs. [`discovery_services`] therefore asks for
//! an unfiltered discovery as soon as one profile may match by name.
//!
//! When several profiles match one advertisement (every 0x1810 cuff matches every
//! blood-pressure profile), [`Match::rank`] orders them: what the device's Device
//! Information says (when it was read: [`DeviceInfoAgreement`]) first, then a name-prefix
//! match (longer prefix first) before a match by service alone.

use uuid::Uuid;

/// A profile's recognition rule.
#[derive(Debug, Clone, Copy)]
pub struct Recognition<'a> {
    /// The profile's advertised service UUIDs.
    pub services: &'a [Uuid],
    /// The profile's advertised name prefix.
    pub name_prefix: Option<&'a str>,
}

/// How far a device's Device Information agrees with a profile's manufacturer and model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum DeviceInfoAgreement {
    /// Not read, or it names neither.
    #[default]
    None,
    /// The manufacturer agrees (first word, letters and digits, any case).
    Manufacturer,
    /// The manufacturer and the model agree (one model number contains the other,
    /// letters and digits only, any case).
    ManufacturerAndModel,
}

impl DeviceInfoAgreement {
    /// Compares a profile's manufacturer and model with the strings a device reports.
    pub fn of(
        profile_manufacturer: &str,
        profile_model: &str,
        manufacturer: Option<&str>,
        model: Option<&str>,
    ) -> Self {
        let squash = |s: &str| -> String {
            s.chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let first = |s: &str| squash(s.split_whitespace().next().unwrap_or_default());
        let maker = manufacturer.is_some_and(|m| {
            let (a, b) = (first(m), first(profile_manufacturer));
            !a.is_empty() && a == b
        });
        let model = model.is_some_and(|m| {
            let (a, b) = (squash(m), squash(profile_model));
            !a.is_empty() && !b.is_empty() && (a.contains(&b) || b.contains(&a))
        });
        match (maker, model) {
            (true, true) => Self::ManufacturerAndModel,
            (true, false) => Self::Manufacturer,
            _ => Self::None,
        }
    }
}

/// How an advertisement matched a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// What the device's Device Information says of the profile, when it was read.
    pub device_info: DeviceInfoAgreement,
    /// The advertised name starts with the profile's name prefix (its length in bytes).
    pub name_prefix: Option<usize>,
    /// An advertised service UUID is one of the profile's.
    pub service: Option<Uuid>,
}

impl Match {
    /// The ordering key: higher is a better match. Device Information agreeing beats
    /// the advertisement; a name prefix (longer first) beats a service alone; a name
    /// prefix and a service beat a name prefix alone.
    pub fn rank(&self) -> (DeviceInfoAgreement, usize, bool) {
        (
            self.device_info,
            self.name_prefix.map_or(0, |n| n.saturating_add(1)),
            self.service.is_some(),
        )
    }

    /// Why it matched, for people: `name prefix, service 1810`.
    pub fn reason(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        match self.device_info {
            DeviceInfoAgreement::ManufacturerAndModel => {
                parts.push("Device Information manufacturer and model".into())
            }
            DeviceInfoAgreement::Manufacturer => {
                parts.push("Device Information manufacturer".into())
            }
            DeviceInfoAgreement::None => {}
        }
        if self.name_prefix.is_some() {
            parts.push("name prefix".into());
        }
        if let Some(u) = self.service {
            parts.push(match super::uuid_to_u16(u) {
                Some(s) => format!("service {s:04X}"),
                None => format!("service {u}"),
            });
        }
        parts.join(", ")
    }
}

impl Recognition<'_> {
    /// Whether (and how) an advertisement (local name, service UUIDs) matches.
    pub fn matches(&self, name: Option<&str>, services: &[Uuid]) -> Option<Match> {
        let m = Match {
            device_info: DeviceInfoAgreement::None,
            name_prefix: self
                .name_prefix
                .filter(|p| !p.is_empty() && name.is_some_and(|n| n.starts_with(p)))
                .map(str::len),
            service: services.iter().find(|s| self.services.contains(s)).copied(),
        };
        (m.name_prefix.is_some() || m.service.is_some()).then_some(m)
    }
}

/// The service UUIDs of a discovery filter that lets every device these rules may
/// recognize through; empty (no filter) when one rule may match by name alone.
pub fn discovery_services<'a>(rules: impl IntoIterator<Item = Recognition<'a>>) -> Vec<Uuid> {
    let mut services: Vec<Uuid> = Vec::new();
    for r in rules {
        if r.name_prefix.is_some() || r.services.is_empty() {
            return Vec::new();
        }
        for s in r.services {
            if !services.contains(s) {
                services.push(*s);
            }
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble_driver::uuid_from_u16;

    const BP: &[Uuid] = &[];

    #[test]
    fn a_name_prefix_matches_without_any_profile_service() {
        let bp = [uuid_from_u16(0x1810)];
        let r = Recognition {
            services: &bp,
            name_prefix: Some("A&D_UA-651"),
        };
        let vendor = Uuid::from_u128(0x233b_f000_5a34_1b6d_975c_000d_5690_abe4);
        let m = r.matches(Some("A&D_UA-651BLE"), &[vendor]).unwrap();
        assert_eq!(m.reason(), "name prefix");
        assert_eq!(
            r.matches(None, &bp).unwrap().reason(),
            "service 1810",
            "by service alone"
        );
        assert!(r.matches(Some("Kettle"), &[vendor]).is_none());
        assert!(r.matches(Some("A&D"), BP).is_none());
    }

    #[test]
    fn a_name_prefix_ranks_above_a_service_alone() {
        let bp = [uuid_from_u16(0x1810)];
        let and = Recognition {
            services: &bp,
            name_prefix: Some("A&D_UA-651"),
        };
        let omron = Recognition {
            services: &bp,
            name_prefix: Some("X4 Smart"),
        };
        let a = and.matches(Some("A&D_UA-651BLE"), &bp).unwrap();
        let o = omron.matches(Some("A&D_UA-651BLE"), &bp).unwrap();
        assert!(a.rank() > o.rank());
        assert_eq!(a.reason(), "name prefix, service 1810");
    }

    #[test]
    fn device_information_agreeing_ranks_above_the_advertisement() {
        use DeviceInfoAgreement as D;
        let omron = D::of(
            "Omron Healthcare",
            "X4 Smart (HEM-7155T)",
            Some("OMRON HEALTHCARE Co., Ltd."),
            Some("HEM-7155T"),
        );
        assert_eq!(omron, D::ManufacturerAndModel);
        let and = D::of("A&D Medical", "UA-651BLE", Some("OMRON"), Some("HEM-7155T"));
        assert_eq!(and, D::None);
        assert_eq!(
            D::of("A&D Medical", "UA-651BLE", Some("A&D"), Some("UA-767")),
            D::Manufacturer
        );
        assert_eq!(D::of("A&D Medical", "UA-651BLE", None, None), D::None);
        let bp = [uuid_from_u16(0x1810)];
        let by_service = Match {
            device_info: D::ManufacturerAndModel,
            name_prefix: None,
            service: Some(bp[0]),
        };
        let by_name = Match {
            device_info: D::None,
            name_prefix: Some(10),
            service: Some(bp[0]),
        };
        assert!(by_service.rank() > by_name.rank());
        assert_eq!(
            by_service.reason(),
            "Device Information manufacturer and model, service 1810"
        );
    }

    #[test]
    fn discovery_is_unfiltered_once_a_profile_matches_by_name() {
        let bp = [uuid_from_u16(0x1810)];
        let scale = [uuid_from_u16(0x181D)];
        let by_service = [
            Recognition {
                services: &bp,
                name_prefix: None,
            },
            Recognition {
                services: &scale,
                name_prefix: None,
            },
        ];
        assert_eq!(discovery_services(by_service), vec![bp[0], scale[0]]);
        let by_name = Recognition {
            services: &bp,
            name_prefix: Some("A&D"),
        };
        assert!(discovery_services([by_service[0], by_name]).is_empty());
    }
}

//! The built-in catalog of standard vital signs and device measurements.
//!
//! A device profile maps each decoded field to a catalog *kind* (`vital = "spo2"`) and gets
//! the right LOINC and MDC codes, UCUM unit, FHIR profile and plausible range for free; it
//! overrides only what its device does differently. Codes and units follow the FHIR R4
//! Vital Signs profiles, the HL7 Personal Health Device IG and the IEEE 11073-10101
//! nomenclature (MDC).
//!
//! Adding a kind is one entry in [`KINDS`] (with its typical value, from which the golden
//! test makes `gateway/tests/golden/kind-<key>.json`) and one row in the table of
//! `device-profiles/README.md` (the tidy test checks that table against this one).

/// The Observation category a kind belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `vital-signs`: the FHIR Vital Signs profile applies.
    VitalSigns,
    /// `laboratory`: e.g. blood glucose, which is not in the vital-signs value set.
    Laboratory,
    /// `exam`: measurements such as body fat that are neither.
    Exam,
    /// A measurement of the device itself (battery charge): no observation-category
    /// code fits, so only the PHD category is given (as in the PHD IG's examples).
    Device,
}

impl Category {
    /// The code in `http://terminology.hl7.org/CodeSystem/observation-category` and its
    /// display; `None` for a device measurement.
    pub fn coding(self) -> Option<(&'static str, &'static str)> {
        match self {
            Category::VitalSigns => Some(("vital-signs", "Vital Signs")),
            Category::Laboratory => Some(("laboratory", "Laboratory")),
            Category::Exam => Some(("exam", "Exam")),
            Category::Device => None,
        }
    }
}

/// A panel that groups several kinds into one Observation with components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    /// Blood pressure panel 85354-9 with systolic, diastolic and mean components.
    BloodPressure,
}

/// A coded concept: a LOINC code with its display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loinc {
    /// The LOINC code, e.g. `8867-4`.
    pub code: &'static str,
    /// The LOINC long common name.
    pub display: &'static str,
}

/// An IEEE 11073-10101 nomenclature code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mdc {
    /// The 32-bit code in decimal (partition × 65536 + term).
    pub code: u32,
    /// The reference id, e.g. `MDC_PULS_OXIM_SAT_O2`.
    pub refid: &'static str,
}

/// One kind of measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kind {
    /// The name profiles use (`vital = "..."`).
    pub key: &'static str,
    /// The primary LOINC coding; `None` where LOINC has no code for it (battery charge:
    /// the MDC coding alone identifies it).
    pub loinc: Option<Loinc>,
    /// Further LOINC codings required by profiles (SpO2 carries both 2708-6 and 59408-5).
    pub extra_loinc: &'static [Loinc],
    /// The MDC coding, where one exists.
    pub mdc: Option<Mdc>,
    /// The unit Observations are emitted in (a UCUM code).
    pub unit: &'static str,
    /// A typical value in `unit`, written as a device sends it (an exact decimal: its
    /// scale is the precision). The golden files of the normalizer are made from it.
    pub typical: &'static str,
    /// Further units that may be emitted as they are (FHIR vital-signs allows `[degF]`,
    /// `[lb_av]`, `[in_i]`); any other unit of the same dimension is converted to `unit`.
    pub also_emitted_in: &'static [&'static str],
    /// Plausible range `[low, high]` in `unit`: values outside it are physiologically
    /// implausible (handled by the out-of-range rule), not merely abnormal.
    pub plausible: (f64, f64),
    /// The Observation category.
    pub category: Category,
    /// The FHIR core profile the Observation claims, if any.
    pub fhir_profile: Option<&'static str>,
    /// The panel this kind is a component of, if any.
    pub panel: Option<Panel>,
}

const fn loinc(code: &'static str, display: &'static str) -> Loinc {
    Loinc { code, display }
}

const fn mdc(code: u32, refid: &'static str) -> Option<Mdc> {
    Some(Mdc { code, refid })
}

/// The blood-pressure panel's own coding (it has no value, only components).
pub const BP_PANEL: Loinc = Loinc {
    code: "85354-9",
    display: "Blood pressure panel with all children optional",
};
/// The blood-pressure panel's MDC coding.
pub const BP_PANEL_MDC: Mdc = Mdc {
    code: 150020,
    refid: "MDC_PRESS_BLD_NONINV",
};
/// The FHIR core profile of the blood-pressure panel.
pub const BP_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/bp";

macro_rules! profile {
    ($name:literal) => {
        Some(concat!("http://hl7.org/fhir/StructureDefinition/", $name))
    };
}

/// Every kind the gateway knows.
pub const KINDS: &[Kind] = &[
    Kind {
        key: "heart_rate",
        loinc: Some(loinc("8867-4", "Heart rate")),
        extra_loinc: &[],
        mdc: mdc(147842, "MDC_ECG_HEART_RATE"),
        unit: "/min",
        typical: "72",
        also_emitted_in: &[],
        plausible: (20.0, 300.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("heartrate"),
        panel: None,
    },
    Kind {
        key: "pulse_rate",
        loinc: Some(loinc("8867-4", "Heart rate")),
        extra_loinc: &[],
        mdc: mdc(149546, "MDC_PULS_RATE_NON_INV"),
        unit: "/min",
        typical: "72",
        also_emitted_in: &[],
        plausible: (20.0, 300.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("heartrate"),
        panel: None,
    },
    Kind {
        key: "pulse_rate_oximetry",
        loinc: Some(loinc("8867-4", "Heart rate")),
        extra_loinc: &[],
        mdc: mdc(149530, "MDC_PULS_OXIM_PULS_RATE"),
        unit: "/min",
        typical: "72",
        also_emitted_in: &[],
        plausible: (20.0, 300.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("heartrate"),
        panel: None,
    },
    Kind {
        key: "spo2",
        loinc: Some(loinc("2708-6", "Oxygen saturation in Arterial blood")),
        extra_loinc: &[loinc(
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry",
        )],
        mdc: mdc(150456, "MDC_PULS_OXIM_SAT_O2"),
        unit: "%",
        typical: "97",
        also_emitted_in: &[],
        plausible: (40.0, 100.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("oxygensat"),
        panel: None,
    },
    Kind {
        key: "systolic",
        loinc: Some(loinc("8480-6", "Systolic blood pressure")),
        extra_loinc: &[],
        mdc: mdc(150021, "MDC_PRESS_BLD_NONINV_SYS"),
        unit: "mm[Hg]",
        typical: "128",
        also_emitted_in: &[],
        plausible: (40.0, 300.0),
        category: Category::VitalSigns,
        fhir_profile: None,
        panel: Some(Panel::BloodPressure),
    },
    Kind {
        key: "diastolic",
        loinc: Some(loinc("8462-4", "Diastolic blood pressure")),
        extra_loinc: &[],
        mdc: mdc(150022, "MDC_PRESS_BLD_NONINV_DIA"),
        unit: "mm[Hg]",
        typical: "82",
        also_emitted_in: &[],
        plausible: (20.0, 200.0),
        category: Category::VitalSigns,
        fhir_profile: None,
        panel: Some(Panel::BloodPressure),
    },
    Kind {
        key: "mean_arterial",
        loinc: Some(loinc("8478-0", "Mean blood pressure")),
        extra_loinc: &[],
        mdc: mdc(150023, "MDC_PRESS_BLD_NONINV_MEAN"),
        unit: "mm[Hg]",
        typical: "97",
        also_emitted_in: &[],
        plausible: (30.0, 250.0),
        category: Category::VitalSigns,
        fhir_profile: None,
        panel: Some(Panel::BloodPressure),
    },
    Kind {
        key: "body_temperature",
        loinc: Some(loinc("8310-5", "Body temperature")),
        extra_loinc: &[],
        mdc: mdc(150364, "MDC_TEMP_BODY"),
        unit: "Cel",
        typical: "36.8",
        also_emitted_in: &["[degF]"],
        plausible: (25.0, 45.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("bodytemp"),
        panel: None,
    },
    Kind {
        key: "body_weight",
        loinc: Some(loinc("29463-7", "Body weight")),
        extra_loinc: &[],
        mdc: mdc(188736, "MDC_MASS_BODY_ACTUAL"),
        unit: "kg",
        typical: "78.40",
        also_emitted_in: &["g", "[lb_av]"],
        plausible: (0.3, 650.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("bodyweight"),
        panel: None,
    },
    Kind {
        key: "body_height",
        loinc: Some(loinc("8302-2", "Body height")),
        extra_loinc: &[],
        mdc: mdc(188740, "MDC_LEN_BODY_ACTUAL"),
        unit: "cm",
        typical: "176.5",
        also_emitted_in: &["[in_i]"],
        plausible: (20.0, 280.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("bodyheight"),
        panel: None,
    },
    Kind {
        key: "bmi",
        loinc: Some(loinc("39156-5", "Body mass index (BMI) [Ratio]")),
        extra_loinc: &[],
        mdc: mdc(188752, "MDC_RATIO_MASS_BODY_LEN_SQ"),
        unit: "kg/m2",
        typical: "25.2",
        also_emitted_in: &[],
        plausible: (5.0, 120.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("bmi"),
        panel: None,
    },
    Kind {
        key: "respiratory_rate",
        loinc: Some(loinc("9279-1", "Respiratory rate")),
        extra_loinc: &[],
        mdc: mdc(151562, "MDC_RESP_RATE"),
        unit: "/min",
        typical: "15",
        also_emitted_in: &[],
        plausible: (2.0, 90.0),
        category: Category::VitalSigns,
        fhir_profile: profile!("resprate"),
        panel: None,
    },
    Kind {
        key: "body_fat",
        loinc: Some(loinc("41982-0", "Percentage of body fat Measured")),
        extra_loinc: &[],
        mdc: mdc(188748, "MDC_BODY_FAT"),
        unit: "%",
        typical: "21.4",
        also_emitted_in: &[],
        plausible: (1.0, 75.0),
        category: Category::Exam,
        fhir_profile: None,
        panel: None,
    },
    Kind {
        key: "muscle_percentage",
        loinc: Some(loinc("73965-6", "Body muscle mass/Body weight Measured")),
        extra_loinc: &[],
        mdc: None,
        unit: "%",
        typical: "43.8",
        also_emitted_in: &[],
        plausible: (5.0, 90.0),
        category: Category::Exam,
        fhir_profile: None,
        panel: None,
    },
    Kind {
        key: "muscle_mass",
        loinc: Some(loinc("73964-9", "Body muscle mass Calculated")),
        extra_loinc: &[],
        mdc: None,
        unit: "kg",
        typical: "33.440",
        also_emitted_in: &[],
        plausible: (1.0, 300.0),
        category: Category::Exam,
        fhir_profile: None,
        panel: None,
    },
    Kind {
        key: "body_water_mass",
        loinc: Some(loinc("101683-1", "Body water mass")),
        extra_loinc: &[],
        mdc: None,
        unit: "kg",
        typical: "40.240",
        also_emitted_in: &[],
        plausible: (1.0, 400.0),
        category: Category::Exam,
        fhir_profile: None,
        panel: None,
    },
    Kind {
        key: "glucose",
        loinc: Some(loinc(
            "41653-7",
            "Glucose [Mass/volume] in Capillary blood by Glucometer",
        )),
        extra_loinc: &[],
        mdc: mdc(160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"),
        unit: "mg/dL",
        typical: "104",
        also_emitted_in: &[],
        plausible: (10.0, 1000.0),
        category: Category::Laboratory,
        fhir_profile: None,
        panel: None,
    },
    Kind {
        key: "glucose_molar",
        loinc: Some(loinc(
            "14743-9",
            "Glucose [Moles/volume] in Capillary blood by Glucometer",
        )),
        extra_loinc: &[],
        mdc: mdc(160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"),
        unit: "mmol/L",
        typical: "5.8",
        also_emitted_in: &[],
        plausible: (0.5, 55.0),
        category: Category::Laboratory,
        fhir_profile: None,
        panel: None,
    },
    Kind {
        key: "glucose_plasma",
        loinc: Some(loinc("2345-7", "Glucose [Mass/volume] in Serum or Plasma")),
        extra_loinc: &[],
        mdc: mdc(160368, "MDC_CONC_GLU_UNDETERMINED_PLASMA"),
        unit: "mg/dL",
        typical: "104",
        also_emitted_in: &[],
        plausible: (10.0, 1000.0),
        category: Category::Laboratory,
        fhir_profile: None,
        panel: None,
    },
    Kind {
        key: "glucose_interstitial",
        loinc: Some(loinc(
            "99504-3",
            "Glucose [Mass/volume] in Interstitial fluid",
        )),
        extra_loinc: &[],
        mdc: mdc(160212, "MDC_CONC_GLU_ISF"),
        unit: "mg/dL",
        typical: "104",
        also_emitted_in: &[],
        plausible: (10.0, 1000.0),
        category: Category::Laboratory,
        fhir_profile: None,
        panel: None,
    },
    // Not a vital sign: the device's battery, an Observation of its own in the PHD IG
    // (MDC only; LOINC has no code for it). 101-255 % are reserved in GATT and rejected.
    Kind {
        key: "battery",
        loinc: None,
        extra_loinc: &[],
        mdc: mdc(67996, "MDC_ATTR_VAL_BATT_CHARGE"),
        unit: "%",
        typical: "85",
        also_emitted_in: &[],
        plausible: (0.0, 100.0),
        category: Category::Device,
        fhir_profile: None,
        panel: None,
    },
];

/// The base profile every vital-sign Observation claims.
pub const VITAL_SIGNS_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

/// Looks a kind up by its key.
pub fn kind(key: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.key == key)
}

/// The keys of every kind, for error messages.
pub fn keys() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.key).collect()
}

/// A body-temperature site: its MDC code, its LOINC code where one exists, and a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemperatureSite {
    /// The site-specific MDC code (e.g. MDC_TEMP_ORAL).
    pub mdc: Mdc,
    /// The site-specific LOINC code, where one exists.
    pub loinc: Option<Loinc>,
    /// A name for `bodySite.text`.
    pub name: &'static str,
}

/// The site codes of a body temperature measured at `site` (the GATT Temperature Type),
/// or `None` for "body" in general: the IEEE 11073-10101 MDC_TEMP_* code of each GATT
/// Temperature Type and LOINC's site-specific body temperature code; 8310-5 stays the
/// vital-signs coding, these are added to it.
pub fn temperature_site(site: iomt_drivers::BodySite) -> Option<TemperatureSite> {
    use iomt_drivers::BodySite as B;
    let t = |code, refid, loinc: Option<Loinc>, name| TemperatureSite {
        mdc: Mdc { code, refid },
        loinc,
        name,
    };
    Some(match site {
        B::Body => return None,
        B::Armpit => t(
            188452,
            "MDC_TEMP_AXILLA",
            Some(loinc("8328-7", "Axillary temperature")),
            "Axilla",
        ),
        B::Ear => t(
            188428,
            "MDC_TEMP_EAR",
            Some(loinc("76011-6", "Ear temperature")),
            "Ear",
        ),
        B::Finger => t(188432, "MDC_TEMP_FINGER", None, "Finger"),
        B::GastrointestinalTract => t(188456, "MDC_TEMP_GIT", None, "Gastro-intestinal tract"),
        B::Mouth => t(
            188424,
            "MDC_TEMP_ORAL",
            Some(loinc("8331-1", "Oral temperature")),
            "Mouth",
        ),
        B::Rectum => t(
            188420,
            "MDC_TEMP_RECT",
            Some(loinc("8332-9", "Rectal temperature")),
            "Rectum",
        ),
        B::Toe => t(188448, "MDC_TEMP_TOE", None, "Toe"),
        B::Tympanum => t(
            150392,
            "MDC_TEMP_TYMP",
            Some(loinc("8333-7", "Tympanic membrane temperature")),
            "Tympanic membrane",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ucum;

    #[test]
    fn every_kind_has_a_known_unit_and_sane_range() {
        for k in KINDS {
            assert!(ucum::is_known(k.unit), "{}: {}", k.key, k.unit);
            for u in k.also_emitted_in {
                assert_eq!(
                    ucum::dimension(u),
                    ucum::dimension(k.unit),
                    "{}: {u}",
                    k.key
                );
            }
            assert!(k.plausible.0 < k.plausible.1, "{}", k.key);
            match k.loinc {
                Some(l) => assert!(l.code.contains('-'), "{}", k.key),
                // Without LOINC, the MDC coding is what identifies it.
                None => assert!(k.mdc.is_some(), "{}", k.key),
            }
            if k.category == Category::VitalSigns {
                assert!(k.loinc.is_some(), "{}: vital signs need LOINC", k.key);
            }
        }
    }

    #[test]
    fn typical_values_are_exact_decimals_within_the_plausible_range() {
        use rust_decimal::prelude::ToPrimitive;
        for k in KINDS {
            let v: rust_decimal::Decimal = k.typical.parse().unwrap_or_else(|e| {
                panic!(
                    "{}: typical value {:?} is not a decimal: {e}",
                    k.key, k.typical
                )
            });
            let v = v.to_f64().unwrap_or(f64::NAN);
            assert!(
                k.plausible.0 <= v && v <= k.plausible.1,
                "{}: typical value {} outside {:?}",
                k.key,
                k.typical,
                k.plausible
            );
        }
    }

    #[test]
    fn keys_are_unique() {
        let mut keys = keys();
        keys.sort();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len());
    }

    #[test]
    fn glucose_is_never_a_vital_sign() {
        for k in KINDS.iter().filter(|k| k.key.starts_with("glucose")) {
            assert_ne!(k.category, Category::VitalSigns, "{}", k.key);
        }
    }
}

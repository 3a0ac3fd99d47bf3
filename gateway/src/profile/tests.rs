use super::*;
use crate::ucum;

fn parse_str(text: &str) -> Result<Profile, ProfileErrors> {
    parse(Path::new("p.toml"), text)
}

const HEAD: &str = "id = \"t\"\nname = \"T\"\nmanufacturer = \"M\"\nmodel = \"X\"\n";

#[test]
fn a_serial_line_profile_compiles_its_regex_and_defaults() {
    let p = parse_str(&format!(
        "{HEAD}[serial]\nbaud = 9600\n[serial.line]\nregex = 'SPO2=(?P<spo2>\\d+)'\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\nno_reading = [\"---\"]\n"
    ))
    .unwrap();
    let TransportSpec::Serial(s) = &p.transport else {
        panic!("serial expected")
    };
    assert_eq!(
        (s.link.data_bits, s.link.stop_bits, s.link.parity),
        (8, 1, iomt_drivers::serial::Parity::None)
    );
    let iomt_drivers::decode::stream::Framing::Line { terminator, .. } = &*s.framing else {
        panic!("line framing expected")
    };
    assert_eq!(terminator, "\n");
    assert_eq!(
        s.line().unwrap().fields[0].no_reading,
        vec!["---".to_string()]
    );
}

#[test]
fn every_semantic_problem_is_reported_with_its_line() {
    let text = format!(
        "{HEAD}[mqtt]\ntopic = \"a/#/b\"\n[mqtt.json]\n[[field]]\nname = \"x\"\nvital = \"nope\"\npointer = \"/x\"\n[[field]]\nname = \"y\"\nvital = \"spo2\"\nunit = \"percent\"\n"
    );
    let errs = parse_str(&text).unwrap_err().0;
    let lines: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.message.as_str())).collect();
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 6 && m.contains("topic filter")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 10 && m.contains("unknown vital kind `nope`")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 15 && m.contains("write `%`")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 13 && m.contains("needs a `pointer`")),
        "{lines:?}"
    );
}

#[test]
fn transport_specific_keys_are_refused_elsewhere() {
    let text =
        format!("{HEAD}[sim]\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\npointer = \"/spo2\"\n");
    let errs = parse_str(&text).unwrap_err().0;
    assert!(
        errs[0]
            .message
            .contains("`pointer` is not used by sim profiles"),
        "{errs:?}"
    );
}

#[test]
fn a_profile_needs_exactly_one_transport() {
    let none = parse_str(&format!(
        "{HEAD}[[field]]\nname = \"spo2\"\nvital = \"spo2\"\n"
    ))
    .unwrap_err();
    assert!(none.0[0].message.contains("no transport"));
    let two = parse_str(&format!(
        "{HEAD}[sim]\n[mqtt]\ntopic = \"a\"\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\n"
    ))
    .unwrap_err();
    assert!(two.0[0].message.contains("one transport"), "{two}");
}

#[test]
fn blood_pressure_needs_systolic_and_diastolic() {
    let text = format!("{HEAD}[sim]\n[[field]]\nname = \"systolic\"\nvital = \"systolic\"\n");
    let errs = parse_str(&text).unwrap_err();
    assert!(
        errs.to_string().contains("both `systolic` and `diastolic`"),
        "{errs}"
    );
}

#[test]
fn ble_fields_must_be_produced_by_the_decoder() {
    let text = format!("{HEAD}[ble]\nservices = [\"1810\"]\ndecoder = \"blood_pressure_measurement\"\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\n");
    let errs = parse_str(&text).unwrap_err();
    assert!(
        errs.to_string().contains("produces no field `spo2`"),
        "{errs}"
    );
}

#[test]
fn every_ble_profile_may_map_the_battery_level_to_the_battery_kind_only() {
    let base = format!("{HEAD}[ble]\nservices = [\"1809\"]\ndecoder = \"temperature_measurement\"\n[[field]]\nname = \"body_temperature\"\nvital = \"body_temperature\"\n");
    let ok = format!("{base}[[field]]\nname = \"battery_level\"\nvital = \"battery\"\n");
    let p = parse_str(&ok).unwrap();
    let m = p.field("battery_level").unwrap();
    assert!(m.loinc.is_none());
    assert_eq!(m.mdc.as_ref().map(|m| m.code), Some(67996));
    // A percentage is no temperature.
    let wrong =
        format!("{base}[[field]]\nname = \"battery_level\"\nvital = \"body_temperature\"\n");
    let errs = parse_str(&wrong).unwrap_err();
    assert!(errs.to_string().contains("comes in %"), "{errs}");
    // A display needs a LOINC coding to belong to.
    let display = format!("{ok}display = \"Battery\"\n");
    let errs = parse_str(&display).unwrap_err();
    assert!(errs.to_string().contains("no LOINC coding"), "{errs}");
    // The error for an unknown field names battery_level among what can be mapped.
    let unknown = format!("{base}[[field]]\nname = \"charge\"\nvital = \"battery\"\n");
    let errs = parse_str(&unknown).unwrap_err();
    assert!(errs.to_string().contains("battery_level"), "{errs}");
}

#[test]
fn gatt_decoders_list_exactly_the_fields_the_ble_decoders_produce() {
    use iomt_drivers::ble::{fields, Characteristic};
    for d in gatt_decoders() {
        let c = Characteristic::from_uuid16(d.characteristic)
            .unwrap_or_else(|| panic!("{}: no BLE decoder for {:#06x}", d.name, d.characteristic));
        let produced: Vec<&str> = fields(c).iter().map(|f| f.name).collect();
        let listed: Vec<&str> = d.field_names().collect();
        assert_eq!(listed, produced, "{}", d.name);
        for f in fields(c) {
            for u in f.units {
                assert!(ucum::is_known(u), "{}: `{u}` is not in ucum.rs", d.name);
            }
        }
    }
}

#[test]
fn a_ble_field_may_not_set_a_unit_because_packets_carry_theirs() {
    let text = format!("{HEAD}[ble]\nservices = [\"1810\"]\ndecoder = \"blood_pressure_measurement\"\n[[field]]\nname = \"systolic\"\nvital = \"systolic\"\nunit = \"kPa\"\n[[field]]\nname = \"diastolic\"\nvital = \"diastolic\"\n");
    let errs = parse_str(&text).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, 11);
    assert!(
        errs[0].message.contains("takes the unit from each packet"),
        "{errs:?}"
    );
}

#[test]
fn a_ble_field_must_map_to_a_vital_that_can_express_its_units() {
    let text = format!("{HEAD}[ble]\nservices = [\"1808\"]\ndecoder = \"glucose_measurement\"\n[[field]]\nname = \"glucose\"\nvital = \"body_weight\"\n");
    let errs = parse_str(&text).unwrap_err().0;
    assert_eq!(errs[0].line, 10);
    assert!(
        errs[0].message.contains("comes in kg/L or mol/L"),
        "{errs:?}"
    );
    for vital in ["glucose", "glucose_molar", "glucose_plasma"] {
        let text = format!("{HEAD}[ble]\nservices = [\"1808\"]\ndecoder = \"glucose_measurement\"\n[[field]]\nname = \"glucose\"\nvital = \"{vital}\"\n");
        assert!(parse_str(&text).is_ok(), "{vital}");
    }
}

#[test]
fn uuids_are_normalized_to_128_bits() {
    assert_eq!(
        normalize_uuid("1810").unwrap(),
        "00001810-0000-1000-8000-00805f9b34fb"
    );
    assert_eq!(
        normalize_uuid("0x2A35").unwrap(),
        "00002a35-0000-1000-8000-00805f9b34fb"
    );
    assert!(normalize_uuid("18100").is_none());
}

#[test]
fn duplicate_profile_ids_are_reported() {
    let text = format!("{HEAD}[sim]\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\n");
    let a = parse(Path::new("a.toml"), &text).unwrap();
    let b = parse(Path::new("b.toml"), &text).unwrap();
    let errs = duplicate_ids(&[a, b]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0]
        .to_string()
        .starts_with("b.toml:1: profile id `t` is already used by a.toml"));
}

const FRAME: &str = "[serial]\nbaud = 9600\n[serial.frame]\nsize = 5\nsync = [{ offset = 0, mask = 0x80, value = 0x80 }]\nchecksum = { kind = \"xor8\" }\n";

#[test]
fn a_binary_frame_profile_compiles_its_layout() {
    let p = parse_str(&format!(
        "{HEAD}{FRAME}[[field]]\nname = \"spo2\"\nvital = \"spo2\"\noffset = 3\nmask = 0x7F\nno_reading = [127]\n"
    ))
    .unwrap();
    let TransportSpec::Serial(s) = &p.transport else {
        panic!("serial expected")
    };
    let f = s.frame().unwrap();
    assert_eq!(f.fields[0].no_reading, vec![127]);
    let c = f.spec.checksum.unwrap();
    assert_eq!(
        (c.from, c.to, c.at),
        (0, -1, -1),
        "defaults: the last byte covers the rest"
    );
}

#[test]
fn frame_layout_problems_are_reported_with_their_lines() {
    let text = format!(
        "{HEAD}{FRAME}[[field]]\nname = \"spo2\"\nvital = \"spo2\"\noffset = 7\nno_reading = [\"---\"]\n[[field]]\nname = \"pulse\"\nvital = \"pulse_rate\"\nbits = [\"1[9:0]\"]\n[[field]]\nname = \"hr\"\nvital = \"heart_rate\"\n"
    );
    let errs = parse_str(&text).unwrap_err();
    let all = errs.to_string();
    for (line, needle) in [
        (14, "lies beyond the 5-byte frame"),
        (12, "no_reading of a binary frame is a raw integer"),
        (19, "`1[9:0]` is not a bit range"),
        (21, "needs its place in the frame"),
    ] {
        assert!(
            errs.0
                .iter()
                .any(|e| e.line == line && e.message.contains(needle)),
            "line {line}: {needle}\n{all}"
        );
    }
}

#[test]
fn a_serial_profile_has_one_framing_and_known_checksums() {
    let both = parse_str(&format!(
        "{HEAD}{FRAME}[serial.line]\nregex = '(?P<spo2>\\d+)'\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\noffset = 1\n"
    ))
    .unwrap_err();
    assert!(both.to_string().contains("not both"), "{both}");
    let crc = parse_str(&format!(
        "{HEAD}{}[[field]]\nname = \"spo2\"\nvital = \"spo2\"\noffset = 1\n",
        FRAME.replace("xor8", "crc17")
    ))
    .unwrap_err();
    assert!(
        crc.to_string()
            .contains("unknown checksum `crc17`; known: sum8"),
        "{crc}"
    );
}

#[test]
fn frame_keys_are_refused_in_a_line_profile() {
    let errs = parse_str(&format!(
        "{HEAD}[serial]\nbaud = 9600\n[serial.line]\nregex = 'SPO2=(?P<spo2>\\d+)'\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\noffset = 2\n"
    ))
    .unwrap_err();
    assert!(
        errs.to_string().contains("are for [serial.frame] profiles"),
        "{errs}"
    );
}

#[test]
fn a_poll_request_is_text_or_hex_but_not_both() {
    let ok = parse_str(&format!(
        "{HEAD}{FRAME}[serial.poll]\nrequest_hex = \"F5 F5\"\ninterval_ms = 1000\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\noffset = 1\n"
    ))
    .unwrap();
    let TransportSpec::Serial(s) = &ok.transport else {
        panic!("serial expected")
    };
    assert_eq!(s.poll.as_ref().unwrap().request, vec![0xF5, 0xF5]);
    let bad = parse_str(&format!(
        "{HEAD}{FRAME}[serial.poll]\nrequest = \"G1\"\nrequest_hex = \"F5\"\ninterval_ms = 1000\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\noffset = 1\n"
    ))
    .unwrap_err();
    assert!(
        bad.to_string().contains("exactly one of `request`"),
        "{bad}"
    );
}

#[test]
fn a_ble_profile_may_map_several_measurement_characteristics() {
    let both = format!("{HEAD}[ble]\nservices = [\"1822\"]\ndecoders = [\"plx_spot_check_measurement\", \"plx_continuous_measurement\"]\n[[field]]\nname = \"spo2\"\nvital = \"spo2\"\n");
    let p = parse_str(&both).unwrap();
    let TransportSpec::Ble(spec) = &p.transport else {
        panic!("not BLE: {p:?}");
    };
    assert_eq!(spec.characteristics().collect::<Vec<_>>(), [0x2A5E, 0x2A5F]);
    assert!(spec.produces("spo2"));

    let neither = format!("{HEAD}[ble]\nservices = [\"1822\"]\n");
    let errs = parse_str(&neither).unwrap_err().to_string();
    assert!(errs.contains("needs `decoder` (or `decoders`"), "{errs}");

    let twice = format!("{HEAD}[ble]\nservices = [\"1822\"]\ndecoder = \"plx_spot_check_measurement\"\ndecoders = [\"plx_continuous_measurement\"]\n");
    let errs = parse_str(&twice).unwrap_err().to_string();
    assert!(errs.contains("not both"), "{errs}");

    let repeated = format!("{HEAD}[ble]\nservices = [\"1822\"]\ndecoders = [\"plx_spot_check_measurement\", \"plx_spot_check_measurement\"]\n");
    let errs = parse_str(&repeated).unwrap_err().to_string();
    assert!(errs.contains("listed twice"), "{errs}");
}

#[test]
fn live_clock_is_off_by_default_and_needs_a_time_stamp() {
    let line = "[serial.line]\nregex = '^(?P<t>\\S+ \\S+) SPO2=(?P<spo2>\\d+)'\n";
    let field = "[[field]]\nname = \"spo2\"\nvital = \"spo2\"\n";
    let serial_of = |p: &Profile| match &p.transport {
        TransportSpec::Serial(s) => s.live_clock,
        _ => panic!("serial expected"),
    };
    let p = parse_str(&format!("{HEAD}[serial]\nbaud = 9600\n{line}{field}")).unwrap();
    assert!(!serial_of(&p));
    let p = parse_str(&format!(
        "{HEAD}[serial]\nbaud = 9600\nlive_clock = true\n{line}timestamp_captures = [\"t\"]\ntimestamp_format = \"%m/%d/%y %H:%M:%S\"\n{field}"
    ))
    .unwrap();
    assert!(serial_of(&p));
    let errs = parse_str(&format!(
        "{HEAD}[serial]\nbaud = 9600\nlive_clock = true\n{line}{field}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        errs.contains("p.toml:7:") && errs.contains("live_clock needs the device's time stamp"),
        "{errs}"
    );
}

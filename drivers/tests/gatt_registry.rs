//! The GATT registry (`iomt_drivers::ble::registry`) is the one table of characteristics:
//! these tests fail when the documents and files that repeat part of it drift from it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use iomt_drivers::ble::registry::{profile_decoders, REGISTRY};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The texts between backticks in a table cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// One row of the README's table: decoder name, characteristic (hex), field names.
type Row = (String, String, Vec<String>);

/// The rows of `device-profiles/README.md`'s table of built-in GATT decoders.
fn readme_rows() -> Vec<Row> {
    let text = read("device-profiles/README.md");
    let header = "| `decoder` | Characteristic | Field names it produces |";
    let start = text
        .lines()
        .position(|l| l.trim() == header)
        .expect("device-profiles/README.md has the table of GATT decoders");
    text.lines()
        .skip(start + 2) // the header and its separator
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            assert_eq!(cells.len(), 3, "a row of three cells: {line}");
            let name = code_spans(cells[0]);
            assert_eq!(name.len(), 1, "one decoder name: {line}");
            (
                name[0].clone(),
                cells[1].trim().to_string(),
                code_spans(cells[2]),
            )
        })
        .collect()
}

#[test]
fn the_profile_readme_table_lists_exactly_the_registry_decoders() {
    let documented: BTreeSet<Row> = readme_rows().into_iter().collect();
    let registered: BTreeSet<Row> = profile_decoders()
        .map(|(name, e)| {
            (
                name.to_string(),
                format!("{:04X}", e.uuid16),
                e.fields.iter().map(|f| f.name.to_string()).collect(),
            )
        })
        .collect();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "registry rows missing from device-profiles/README.md: {undocumented:?}; \
         README rows the registry does not have: {unknown:?}"
    );
}

/// The `name = "..."` of every `[[bin]]` in `fuzz/Cargo.toml`.
fn fuzz_bins() -> BTreeSet<String> {
    let text = read("fuzz/Cargo.toml");
    text.split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            bin.lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|n| n.trim().trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn every_fuzz_target_the_registry_names_is_built_and_fuzzes_its_characteristic() {
    let bins = fuzz_bins();
    for e in REGISTRY {
        let t = e.fuzz_target;
        assert!(
            bins.contains(t),
            "{t} ({e:?}) has no [[bin]] in fuzz/Cargo.toml"
        );
        let path = format!("fuzz/fuzz_targets/{t}.rs");
        let source = read(&path);
        let fuzzed: Vec<&str> = source
            .split("check(0x")
            .skip(1)
            .filter_map(|rest| rest.get(..4))
            .collect();
        assert!(
            fuzzed.iter().any(|u| u16::from_str_radix(u, 16)
                .is_ok_and(|u| REGISTRY.iter().any(|o| o.uuid16 == u && o.fuzz_target == t))),
            "{path} fuzzes no characteristic of the registry that names it"
        );
    }
}

#[test]
fn every_ble_fuzz_target_is_named_by_the_registry() {
    let named: BTreeSet<&str> = REGISTRY.iter().map(|e| e.fuzz_target).collect();
    for bin in fuzz_bins().iter().filter(|b| b.starts_with("ble_")) {
        assert!(
            named.contains(bin.as_str()),
            "fuzz target {bin} fuzzes no characteristic of the registry"
        );
    }
}

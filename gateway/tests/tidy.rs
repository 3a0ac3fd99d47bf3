//! Tidy checks: the documentation and the build description agree with the code, so they
//! cannot drift apart unnoticed.
//!
//! - Every path ARCHITECTURE.md names exists (the convention is in [`path_like`] and
//!   [`architecture_md_names_only_paths_that_exist`]).
//! - README.md's command table lists every subcommand of the CLI with its options, and no
//!   other.
//! - device-profiles/README.md's table of vital kinds matches the catalog.
//! - Every top-level `tests/*.rs` file has a `[[test]]` entry in gateway/Cargo.toml (a file
//!   without one would silently never run), and every entry's file exists.
//!
//! Each check reports every problem it finds at once, with its line where there is one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use iomt_gateway::catalog::{self, Category, KINDS};

/// The repository's root directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate is inside the repository")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Whether a backticked token of ARCHITECTURE.md names a file or folder of the repository:
/// no white space, not a URL (`://`), not a Rust path (`::`), not an absolute path (those
/// name places on the installed system, such as `/etc/iomt-gateway/storage.key`), not a
/// UCUM unit the gateway knows (`mg/dL`), and either containing `/` or ending in a source
/// or documentation extension.
fn path_like(token: &str) -> bool {
    const EXTENSIONS: &[&str] = &[
        ".rs", ".md", ".toml", ".py", ".json", ".sh", ".yml", ".yaml", ".txt",
    ];
    !token.is_empty()
        && !EXTENSIONS.contains(&token)
        && !token.contains(char::is_whitespace)
        && !token.contains("://")
        && !token.contains("::")
        && !token.starts_with('/')
        && !iomt_gateway::ucum::is_known(token)
        && (token.contains('/') || EXTENSIONS.iter().any(|e| token.ends_with(e)))
}

/// The part of a path that must exist: for a pattern (`*`, `<name>`, `{a,b}`, `...`), the
/// folder before its first wildcard; otherwise the whole path.
fn fixed_part(token: &str) -> &str {
    match token.find(['*', '<', '{']).or_else(|| token.find("...")) {
        Some(i) => match token[..i].rfind('/') {
            Some(slash) => &token[..=slash],
            None => "",
        },
        None => token,
    }
}

/// The folders a path that exists makes available to the tokens after it: itself if it is
/// a folder (and its `src/` if it is a crate), else the folder holding it.
fn bases_from(found: &Path) -> Vec<PathBuf> {
    if found.is_dir() {
        let mut bases = vec![found.to_path_buf()];
        if found.join("Cargo.toml").is_file() {
            bases.push(found.join("src"));
        }
        bases
    } else {
        found.parent().map(Path::to_path_buf).into_iter().collect()
    }
}

/// Every path named in ARCHITECTURE.md exists.
///
/// The convention: a token in backticks that looks like a path ([`path_like`]), or the
/// target of a Markdown link, must exist relative to
/// 1. the repository root, or
/// 2. the folder the section's heading names (`### \`drivers/\``: `drivers/` and, since
///    it is a crate, `drivers/src/`), or
/// 3. a folder named earlier in the same list item, or the folder of a file named earlier
///    in it (in "`ble_driver/`: `mod.rs` ... `sequence.rs`", both are in `ble_driver/`).
///
/// A pattern (`tests/golden/<case>.json`) needs only its fixed folder to exist.
#[test]
fn architecture_md_names_only_paths_that_exist() {
    let root = root();
    let text = read("ARCHITECTURE.md");
    let backticked = regex::Regex::new(r"`([^`\n]+)`").unwrap();
    let link = regex::Regex::new(r"\]\(([^)\s#]+)(#[^)]*)?\)").unwrap();
    let mut section: Vec<PathBuf> = Vec::new();
    let mut item: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            section.clear();
            item.clear();
        } else if line.starts_with("- ") || line.trim().is_empty() {
            item.clear();
        }
        let tokens = backticked
            .captures_iter(line)
            .map(|c| c[1].to_string())
            .filter(|t| path_like(t))
            .chain(
                link.captures_iter(line)
                    .map(|c| c[1].to_string())
                    .filter(|t| !t.contains("://")),
            );
        for token in tokens {
            let wanted = fixed_part(&token);
            let candidates = std::iter::once(root.clone())
                .chain(section.iter().cloned())
                .chain(item.iter().rev().cloned());
            let found = candidates
                .map(|base| base.join(wanted))
                .find(|p| p.exists());
            match found {
                Some(p) => {
                    let bases = bases_from(&p);
                    if line.starts_with('#') {
                        section.extend(bases);
                    } else {
                        item.extend(bases);
                    }
                }
                None => missing.push(format!("ARCHITECTURE.md:{}: `{token}`", n + 1)),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names {} path(s) that do not exist (relative to the repository \
         root, the folder of the section's heading, or a folder or file named earlier in \
         the same list item):\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// The subcommand names in the `Commands:` section of a `--help` text, without `help`.
fn subcommands_in_help(help: &str) -> Vec<String> {
    let entry = regex::Regex::new(r"^  ([a-z][a-z0-9-]*)(\s|$)").unwrap();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| entry.captures(l).map(|c| c[1].to_string()))
        .filter(|c| c != "help")
        .collect()
}

fn help_of(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_iomt-gateway"))
        .args(args)
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The long options in the `Options:` section of a `--help` text, without `--help` and
/// `--version`.
fn options_in_help(help: &str) -> BTreeSet<String> {
    let option = regex::Regex::new(r"^\s+(?:-[A-Za-z], )?(--[a-z][a-z0-9-]*)").unwrap();
    help.lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .filter_map(|l| option.captures(l).map(|c| c[1].to_string()))
        .filter(|o| o != "--help" && o != "--version")
        .collect()
}

/// Every command a user can run, as the CLI has it (`run`, `profile check`, ...), with
/// its long options.
fn cli_commands() -> BTreeMap<String, BTreeSet<String>> {
    let mut commands = BTreeMap::new();
    for top in subcommands_in_help(&help_of(&[])) {
        let help = help_of(&[&top]);
        let subs = subcommands_in_help(&help);
        if subs.is_empty() {
            commands.insert(top, options_in_help(&help));
            continue;
        }
        for sub in subs {
            let options = options_in_help(&help_of(&[&top, &sub]));
            commands.insert(format!("{top} {sub}"), options);
        }
    }
    commands
}

/// README.md's command table lists every subcommand (each subcommand of `profile` and
/// `outbox` on its own) with every long option it takes, and no command or option the
/// CLI does not have. A command may take several rows (`keygen` and `keygen --smart`).
#[test]
fn readme_command_table_lists_every_subcommand() {
    let readme = read("README.md");
    let flag = regex::Regex::new(r"--[a-z][a-z0-9-]*").unwrap();
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut in_commands = false;
    for line in readme.lines() {
        if line.starts_with("## ") {
            in_commands = line.trim() == "## Commands";
            continue;
        }
        let Some(rest) = line.strip_prefix("| `iomt-gateway ") else {
            continue;
        };
        if !in_commands {
            continue;
        }
        let usage = rest.split("` |").next().unwrap_or_default();
        let words: Vec<&str> = usage
            .split_whitespace()
            .take_while(|w| {
                w.starts_with(|c: char| c.is_ascii_lowercase())
                    && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .collect();
        documented
            .entry(words.join(" "))
            .or_default()
            .extend(flag.find_iter(usage).map(|m| m.as_str().to_string()));
    }
    let cli = cli_commands();
    assert!(
        cli.len() >= 9,
        "the CLI's subcommands were not found in --help: {cli:?}"
    );
    let mut problems = Vec::new();
    for (command, options) in &cli {
        match documented.get(command) {
            None => problems.push(format!("`{command}` is missing from the table")),
            Some(listed) => {
                let missing: Vec<_> = options.difference(listed).collect();
                let unknown: Vec<_> = listed.difference(options).collect();
                if !missing.is_empty() {
                    problems.push(format!("`{command}`: options missing {missing:?}"));
                }
                if !unknown.is_empty() {
                    problems.push(format!("`{command}`: no such options {unknown:?}"));
                }
            }
        }
    }
    for command in documented.keys().filter(|c| !cli.contains_key(*c)) {
        problems.push(format!("`{command}` is in the table but is not a command"));
    }
    assert!(
        problems.is_empty(),
        "README.md's command table (## Commands) does not match the CLI:\n{}",
        problems.join("\n")
    );
}

/// One expected row of device-profiles/README.md's table of vital kinds.
fn kind_row(k: &catalog::Kind) -> String {
    let loinc = match k.loinc {
        None => "— (LOINC has none)".to_string(),
        Some(l) => std::iter::once(l)
            .chain(k.extra_loinc.iter().copied())
            .map(|l| format!("{} — {}", l.code, l.display))
            .collect::<Vec<_>>()
            .join(", **and** "),
    };
    let mdc = k
        .mdc
        .map_or_else(|| "—".to_string(), |m| format!("{} ({})", m.code, m.refid));
    let also = k
        .also_emitted_in
        .iter()
        .map(|u| format!("`{u}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let row = format!(
        "| `{}` | {loinc} | {mdc} | `{}` | {also} | {}–{} | {} |",
        k.key,
        k.unit,
        k.plausible.0,
        k.plausible.1,
        category_text(k)
    );
    // An empty cell is written `| |`, as in the README.
    row.replace("|  |", "| |")
}

fn category_text(k: &catalog::Kind) -> String {
    match (k.category.coding(), k.category, k.panel) {
        (Some((code, _)), _, Some(_)) => format!("{code} (BP panel)"),
        (Some((code, _)), _, None) => code.to_string(),
        (None, Category::Device, _) => "device (PHD category only)".to_string(),
        (None, _, _) => "—".to_string(),
    }
}

fn cells(row: &str) -> Vec<String> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// device-profiles/README.md's table of vital kinds (2.1) has one row per catalog kind, in
/// the catalog's order, with its LOINC and MDC codings, unit, units emitted as they are,
/// plausible range and category; a missing or wrong row is reported with the row to write.
#[test]
fn profile_readme_vital_kinds_table_matches_the_catalog() {
    let readme = read("device-profiles/README.md");
    let lines: Vec<&str> = readme.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("| Key | LOINC code"))
        .expect("device-profiles/README.md has the table of vital kinds (| Key | LOINC code ...)");
    let rows: Vec<(usize, &str)> = lines
        .iter()
        .enumerate()
        .skip(header + 2)
        .take_while(|(_, l)| l.starts_with('|'))
        .map(|(i, l)| (i + 1, *l))
        .collect();
    let mut problems = Vec::new();
    let documented: Vec<String> = rows
        .iter()
        .map(|(_, r)| cells(r)[0].trim_matches('`').to_string())
        .collect();
    let keys: Vec<String> = KINDS.iter().map(|k| k.key.to_string()).collect();
    if documented != keys {
        problems.push(format!(
            "device-profiles/README.md:{}: the table lists the kinds {documented:?}; the \
             catalog has {keys:?} (same order)",
            header + 1
        ));
    }
    for k in KINDS {
        let want = kind_row(k);
        match rows
            .iter()
            .find(|(_, r)| cells(r)[0].trim_matches('`') == k.key)
        {
            Some((n, row)) if cells(row) != cells(&want) => problems.push(format!(
                "device-profiles/README.md:{n}: the row of `{}` differs from the catalog; \
                 it should read\n{want}",
                k.key
            )),
            Some(_) => {}
            None => problems.push(format!(
                "device-profiles/README.md: no row for the catalog's `{}`; add\n{want}",
                k.key
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every top-level `tests/*.rs` file has a `[[test]]` entry in gateway/Cargo.toml, and
/// every entry's file exists: cargo does not discover the top-level tests on its own, so a
/// file without an entry would never run.
#[test]
fn every_top_level_test_file_has_a_test_entry() {
    let root = root();
    let manifest: toml::Table = read("gateway/Cargo.toml")
        .parse()
        .expect("gateway/Cargo.toml is TOML");
    let entries: Vec<(String, String)> = manifest
        .get("test")
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .map(|t| {
                    let field = |k: &str| {
                        t.get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    (field("name"), field("path"))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut problems = Vec::new();
    let gateway = root.join("gateway");
    let mut listed = BTreeSet::new();
    for (name, path) in &entries {
        if path.is_empty() {
            // Without a path, cargo looks in gateway/tests/, which it also discovers.
            continue;
        }
        let file = gateway.join(path);
        match file.canonicalize() {
            Ok(f) => {
                listed.insert(f);
            }
            Err(_) => problems.push(format!(
                "gateway/Cargo.toml: [[test]] `{name}` names {path}, which does not exist"
            )),
        }
    }
    let tests_dir = root.join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .expect("tests/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no tests/*.rs found");
    for f in files {
        let known = f.canonicalize().is_ok_and(|c| listed.contains(&c));
        if !known {
            let stem = f.file_stem().unwrap_or_default().to_string_lossy();
            problems.push(format!(
                "tests/{stem}.rs has no [[test]] entry in gateway/Cargo.toml, so it never \
                 runs; add\n[[test]]\nname = \"{stem}\"\npath = \"../tests/{stem}.rs\""
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_path_convention_takes_repository_paths_and_leaves_the_rest() {
    for path in [
        "drivers/",
        "main.rs",
        "tests/run-all",
        "docs/uplinks.md",
        "a.toml",
    ] {
        assert!(path_like(path), "{path}");
    }
    for other in [
        "/etc/iomt-gateway/storage.key",
        "mqtt://",
        "daemon::Hooks",
        "journalctl -u iomt-gateway",
        "mm[Hg]",
        "mg/dL",
        "gateway.channel_capacity",
        ".rs",
    ] {
        assert!(!path_like(other), "{other}");
    }
    assert_eq!(
        fixed_part("gateway/tests/golden/<case>.json"),
        "gateway/tests/golden/"
    );
    assert_eq!(fixed_part("tests/*.rs"), "tests/");
    assert_eq!(fixed_part("docs/bluetooth.md"), "docs/bluetooth.md");
}

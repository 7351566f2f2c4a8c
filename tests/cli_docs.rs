//! README.md's table of `serve` settings is checked against `agent-warden serve --help`,
//! which clap derives from the one definition of each setting (src/config.rs): every
//! flag is in the table with the same default, and the table names no other flag.

mod common;

use std::collections::BTreeMap;

use common::ROOT;

/// Flags that every subcommand has (logging), documented elsewhere in the README.
const GLOBAL: &[&str] = &["--log", "--log-json", "--help"];

/// `--flag` → its `[default: …]` (if any), from `serve --help`.
fn help_flags() -> BTreeMap<String, Option<String>> {
    let out = common::run_warden(&["serve", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t
            .strip_prefix("--")
            .filter(|_| line.starts_with("      --"))
        {
            let name = rest.split([' ', '=', '[', '<']).next().unwrap();
            current = Some(format!("--{name}"));
            flags.insert(format!("--{name}"), None);
        } else if let (Some(flag), Some(i)) = (&current, t.find("[default: ")) {
            let d = &t[i + "[default: ".len()..];
            let d = &d[..d.find(']').unwrap()];
            flags.insert(flag.clone(), Some(d.to_string()));
        }
    }
    flags
}

#[test]
fn readme_table_matches_serve_help() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `--")).collect();
    assert!(!rows.is_empty(), "no settings table in README.md");
    let help = help_flags();
    assert!(help.len() > 15, "{help:?}");
    for (flag, default) in help.iter().filter(|(f, _)| !GLOBAL.contains(&f.as_str())) {
        let row = rows
            .iter()
            .find(|r| r.contains(&format!("`{flag}`")) || r.contains(&format!("`{flag} ")))
            .unwrap_or_else(|| panic!("README.md's settings table has no row for {flag}"));
        if let Some(d) = default {
            let cell = row.split('|').nth(2).unwrap_or_default();
            assert!(
                cell.contains(d.as_str()),
                "README.md gives {flag} the default {cell:?}; --help says {d:?}"
            );
        }
    }
    for row in rows {
        for flag in row
            .split('`')
            .filter_map(|s| s.strip_prefix("--"))
            .map(|s| format!("--{}", s.split(' ').next().unwrap()))
        {
            assert!(
                help.contains_key(&flag),
                "README.md documents {flag}, which `serve --help` does not have"
            );
        }
    }
}

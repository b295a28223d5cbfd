//! The manual (docs/, built with mdBook) against the code and itself:
//! - the configuration reference (docs/configuration.md) and config/ringlb.toml name the
//!   same keys, and every key of ringlb's effective configuration is in the reference;
//! - every relative link of the README and the manual reaches a file that exists, and every
//!   `#anchor` a heading of its page (mdBook itself does not fail on a broken link);
//! - every page of docs/ is in SUMMARY.md, and every page SUMMARY.md names exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `[pools.web.health]` -> `pools.NAME.health`; `[[listeners]]` -> `listeners`.
fn section(header: &str) -> Option<String> {
    let h = header.trim();
    let inner = h
        .strip_prefix("[[")
        .and_then(|s| s.strip_suffix("]]"))
        .or_else(|| h.strip_prefix('[').and_then(|s| s.strip_suffix(']')))?;
    if inner.is_empty()
        || !inner
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '_' || c == '.')
    {
        return None;
    }
    let mut parts: Vec<&str> = inner.split('.').collect();
    if parts.len() >= 2 && parts[0] == "pools" {
        parts[1] = "NAME";
    }
    Some(parts.join("."))
}

fn qualified(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// The keys named in an inline table or array of them: `{ a = 1, b = "x" }` -> a, b.
fn inline_keys(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut depth = 0;
    let mut quoted = false;
    let mut word = String::new();
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            '#' if !quoted && depth == 0 => break,
            _ => {}
        }
        if quoted || depth == 0 {
            word.clear();
            continue;
        }
        if c.is_ascii_lowercase() || c == '_' {
            word.push(c);
        } else if c == '=' {
            if !word.is_empty() {
                keys.push(std::mem::take(&mut word));
            }
        } else if c != ' ' {
            word.clear();
        }
    }
    keys
}

/// Every key config/ringlb.toml shows, set or commented out, qualified by its section.
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut sec = String::new();
    let mut array: Option<String> = None;
    for raw in text.lines() {
        let t = raw.trim();
        let line = t.strip_prefix('#').map(str::trim).unwrap_or(t);
        if let Some(s) = section(line.split('#').next().unwrap_or("")) {
            sec = s;
            array = None;
            continue;
        }
        if let Some(a) = &array {
            if line.starts_with(']') {
                array = None;
            } else {
                for k in inline_keys(line) {
                    keys.insert(qualified(&sec, &format!("{a}.{k}")));
                }
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        keys.insert(qualified(&sec, key));
        let value = value.trim();
        for k in inline_keys(value) {
            keys.insert(qualified(&sec, &format!("{key}.{k}")));
        }
        let code = value.split(" #").next().unwrap_or(value);
        if code.starts_with('[') && !code.contains(']') {
            array = Some(key.to_string());
        }
    }
    keys
}

/// Every key the reference's tables name: the backticked names of a row's first cell,
/// qualified by the section its heading names (`## \`[pools.NAME]\``; `## Top level`).
fn reference_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut sec: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            sec = if h == "Top level" {
                Some(String::new())
            } else {
                section(h.trim_matches('`'))
            };
            continue;
        }
        let Some(s) = &sec else { continue };
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let first = row.split('|').next().unwrap_or("");
        if first.trim() == "key" || first.starts_with("---") {
            continue;
        }
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                keys.insert(qualified(s, part));
            }
        }
    }
    keys
}

/// The keys of ringlb's effective configuration (defaults filled in) of `text`.
fn effective_keys(text: &str) -> BTreeSet<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let k = if prefix == "pools" {
                        "NAME"
                    } else {
                        k.as_str()
                    };
                    let path = qualified(prefix, k);
                    if prefix != "pools" {
                        out.insert(path.clone());
                    }
                    walk(&path, v, out);
                }
            }
            toml::Value::Array(a) => {
                for v in a {
                    walk(prefix, v, out);
                }
            }
            _ => {}
        }
    }
    let cfg = ringlb::config::Config::parse("ringlb.toml", text).expect("the example parses");
    let value = toml::Value::try_from(&cfg).expect("the config serializes");
    let mut out = BTreeSet::new();
    walk("", &value, &mut out);
    out
}

#[test]
fn the_configuration_reference_and_the_example_name_the_same_keys() {
    let example = read(&root().join("config/ringlb.toml"));
    let reference = read(&root().join("docs/configuration.md"));
    let in_example = example_keys(&example);
    let in_reference = reference_keys(&reference);
    assert!(in_example.len() > 80, "{in_example:?}");
    let only_example: Vec<_> = in_example.difference(&in_reference).collect();
    let only_reference: Vec<_> = in_reference.difference(&in_example).collect();
    assert!(
        only_example.is_empty() && only_reference.is_empty(),
        "keys in config/ringlb.toml but not in docs/configuration.md: {only_example:?}; \
         in docs/configuration.md but not in config/ringlb.toml: {only_reference:?}"
    );
    // Sections are headings of the reference, not rows.
    let sections: BTreeSet<String> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("## `"))
        .filter_map(|h| section(h.trim_end_matches('`')))
        .collect();
    assert!(sections.contains("pools.NAME.health"), "{sections:?}");
    let effective = effective_keys(&example);
    let undocumented: Vec<_> = effective
        .difference(&in_reference)
        .filter(|k| !sections.contains(*k) && k.as_str() != "pools")
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys of the effective configuration missing from docs/configuration.md: {undocumented:?}"
    );
}

#[test]
fn a_key_missing_from_either_side_is_seen() {
    // The extractors themselves: a test that could not fail would be no test.
    let example = "a = 1\n# b = \"x\"  # c = 2\n[pools.web]\nbackends = [\n  { addr = \"x\", weight = 2 },  # w = 1\n]\nk = { idle = \"1s\" }\n[[listeners]]\n# routes = [\n#   { sni = \"s\", pool = \"p\" },\n# ]\n";
    let want: BTreeSet<String> = [
        "a",
        "b",
        "pools.NAME.backends",
        "pools.NAME.backends.addr",
        "pools.NAME.backends.weight",
        "pools.NAME.k",
        "pools.NAME.k.idle",
        "listeners.routes",
        "listeners.routes.sni",
        "listeners.routes.pool",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(example_keys(example), want);
    let reference = "## Top level\n\n| key | default | meaning |\n|---|---|---|\n| `a`, `b` | `1` | `not_a_key` |\n\n## `[pools.NAME]`\n\n| key | d | m |\n|---|---|---|\n| `backends.addr` | | |\n";
    let got = reference_keys(reference);
    let want: BTreeSet<String> = ["a", "b", "pools.NAME.backends.addr"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// mdBook's (and GitHub's) anchor of a heading: lower case, spaces to `-`, other
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a Markdown text outside code (fenced blocks, indented blocks).
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced && !line.starts_with("    ")
    })
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .filter_map(|line| line.strip_prefix('#'))
        .map(|h| h.trim_start_matches('#'))
        .filter(|h| h.starts_with(' '))
        .map(anchor)
        .collect()
}

/// The targets of `[text](target)` links outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files.sort();
    files
}

#[test]
fn every_link_of_the_readme_and_the_manual_reaches_its_file_and_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let dir = file.parent().unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, frag) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !dest.exists() {
                broken.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if let Some(f) = frag
                && !anchors(&read(&dest)).contains(f)
            {
                broken.push(format!("{}: {target}: no such heading", file.display()));
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_summary_lists_every_page_of_the_manual() {
    let summary = read(&root().join("docs/SUMMARY.md"));
    let listed: BTreeSet<String> = links(&summary).into_iter().collect();
    for page in &listed {
        assert!(
            root().join("docs").join(page).exists(),
            "SUMMARY.md lists {page}, which does not exist"
        );
    }
    for file in markdown_files() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if file.parent() == Some(&root().join("docs")) && name != "SUMMARY.md" {
            assert!(listed.contains(&name), "docs/{name} is not in SUMMARY.md");
        }
    }
}

#[test]
fn the_readme_is_a_front_page() {
    let lines = read(&root().join("README.md")).lines().count();
    assert!(
        lines <= 260,
        "README.md has {lines} lines: the rest belongs in docs/"
    );
}

#[test]
fn the_readme_configuration_is_valid() {
    let readme = read(&root().join("README.md"));
    let block: String = readme
        .split("## A configuration")
        .nth(1)
        .expect("README has \"## A configuration\"")
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(block.contains("[[listeners]]"), "{block}");
    if let Err(e) = ringlb::config::Config::parse("README.md", &block) {
        panic!("the README's configuration: {e}");
    }
}

#[test]
fn headings_and_links_in_code_are_not_read() {
    let text = "# A b\n```\n# not a heading [no](link.md)\n```\n## C-d (e)\n    [indented](x.md)\n[yes](a.md#b) and [too](#c-d-e)\n";
    let want: BTreeSet<String> = ["a-b", "c-d-e"].iter().map(|s| s.to_string()).collect();
    assert_eq!(anchors(text), want);
    assert_eq!(
        links(text),
        vec!["a.md#b".to_string(), "#c-d-e".to_string()]
    );
}

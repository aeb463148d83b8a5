//! Layering and hygiene rules, checked from the manifests and sources.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Which workspace crates each library crate may depend on (normal dependencies). Edges point
/// toward `amboy-core`, which itself rests on `amboy-dependency`, as Go's root package imports
/// `dependency`. Queue crates never depend on each other or on runners; runners never depend on
/// queues; nothing depends on the facade.
const ALLOWED: &[(&str, &[&str])] = &[
    ("amboy-dependency", &[]),
    ("amboy-core", &["amboy-dependency"]),
    ("amboy-registry", &["amboy-core", "amboy-dependency"]),
    (
        "amboy-queue-local",
        &["amboy-core", "amboy-dependency", "amboy-registry"],
    ),
    ("amboy-runner", &["amboy-core"]),
    ("amboy-retry", &["amboy-core"]),
    (
        "amboy-cli",
        &[
            "amboy-core",
            "amboy-dependency",
            "amboy-registry",
            "amboy-queue-local",
            "amboy-runner",
            "amboy-retry",
            "amboy-queue-postgres",
            "amboy-management",
            "amboy-rest",
            "amboy-jobs",
        ],
    ),
    (
        "amboy-logger",
        &[
            "amboy-core",
            "amboy-dependency",
            "amboy-registry",
            "amboy-queue-local",
            "amboy-runner",
        ],
    ),
    (
        "amboy-jobs",
        &["amboy-core", "amboy-dependency", "amboy-registry"],
    ),
    (
        "amboy-rest",
        &[
            "amboy-core",
            "amboy-dependency",
            "amboy-registry",
            "amboy-management",
        ],
    ),
    (
        "amboy-management",
        &["amboy-core", "amboy-dependency", "amboy-registry"],
    ),
    (
        "amboy-queue-postgres",
        &[
            "amboy-core",
            "amboy-dependency",
            "amboy-registry",
            "amboy-management",
        ],
    ),
    (
        "amboy",
        &[
            "amboy-core",
            "amboy-dependency",
            "amboy-registry",
            "amboy-queue-local",
            "amboy-runner",
            "amboy-retry",
            "amboy-queue-postgres",
            "amboy-management",
            "amboy-jobs",
            "amboy-rest",
            "amboy-logger",
        ],
    ),
];

/// Crates that serve the workspace and may depend on anything.
const UNRESTRICTED: &[&str] = &["amboy-tests", "amboy-bench", "xtask"];

/// Storage and network crates the core must never pull in.
const STORAGE_CRATES: &[&str] = &[
    "sqlx",
    "tokio-postgres",
    "postgres",
    "mongodb",
    "redis",
    "diesel",
    "rusqlite",
];

/// A member crate as its manifest describes it.
#[derive(Debug)]
struct Member {
    name: String,
    /// Normal dependencies (not dev or build).
    dependencies: Vec<String>,
    uses_workspace_lints: bool,
    lib_rs: Option<String>,
}

/// Checks every rule; `Err` lists every problem found.
pub(crate) fn check(root: &Path) -> Result<(), Vec<String>> {
    let members = members(root).map_err(|error| vec![error])?;
    let mut problems = Vec::new();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let internal: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    for member in &members {
        if !member.uses_workspace_lints {
            problems.push(format!(
                "{}: add `[lints] workspace = true` to its Cargo.toml",
                member.name
            ));
        }
        if let Some(lib) = &member.lib_rs
            && !lib.trim_start().starts_with("//!")
        {
            problems.push(format!(
                "{}: lib.rs must open with a `//!` crate doc",
                member.name
            ));
        }
        if UNRESTRICTED.contains(&member.name.as_str()) {
            continue;
        }
        let Some(permitted) = allowed.get(member.name.as_str()) else {
            problems.push(format!(
                "{}: not in xtask's layering table; add it to ALLOWED in xtask/src/tidy.rs",
                member.name
            ));
            continue;
        };
        for dependency in &member.dependencies {
            if internal.contains(&dependency.as_str()) && !permitted.contains(&dependency.as_str())
            {
                problems.push(format!(
                    "{} must not depend on {} (allowed: {})",
                    member.name,
                    dependency,
                    permitted.join(", ")
                ));
            }
        }
        if member.name == "amboy-core" || member.name == "amboy-dependency" {
            for dependency in &member.dependencies {
                if STORAGE_CRATES.contains(&dependency.as_str()) {
                    problems.push(format!(
                        "{} must stay free of storage crates, but uses {dependency}",
                        member.name
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The members listed in the root manifest.
fn members(root: &Path) -> Result<Vec<Member>, String> {
    let manifest = read(&root.join("Cargo.toml"))?;
    let mut members = Vec::new();
    for path in member_paths(&manifest) {
        let dir = root.join(&path);
        let text = read(&dir.join("Cargo.toml"))?;
        let sections = sections(&text);
        let name = sections
            .get("package")
            .and_then(|lines| lines.iter().find_map(|line| value_of(line, "name")))
            .ok_or_else(|| format!("{path}/Cargo.toml has no package name"))?;
        let dependencies = sections
            .get("dependencies")
            .map(|lines| {
                lines
                    .iter()
                    .filter_map(|line| dependency_name(line))
                    .collect()
            })
            .unwrap_or_default();
        let uses_workspace_lints = sections.get("lints").is_some_and(|lines| {
            lines
                .iter()
                .any(|line| line.replace(' ', "") == "workspace=true")
        });
        let lib_rs = fs::read_to_string(dir.join("src/lib.rs")).ok();
        members.push(Member {
            name,
            dependencies,
            uses_workspace_lints,
            lib_rs,
        });
    }
    Ok(members)
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

/// The paths in `[workspace] members = [...]`.
fn member_paths(manifest: &str) -> Vec<String> {
    let Some(start) = manifest.find("members = [") else {
        return Vec::new();
    };
    let rest = &manifest[start + "members = [".len()..];
    let end = rest.find(']').unwrap_or(rest.len());
    rest[..end]
        .split(',')
        .map(|item| item.trim().trim_matches('"').to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

/// The lines of each `[section]`, comments and blank lines dropped.
fn sections(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            current = line.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        sections
            .entry(current.clone())
            .or_default()
            .push(line.to_owned());
    }
    sections
}

/// `value` from a `key = "value"` line.
fn value_of(line: &str, key: &str) -> Option<String> {
    let (k, v) = line.split_once('=')?;
    (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
}

/// The crate name of a dependency line: `name = ...` or `name.workspace = true`.
fn dependency_name(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let name = key.strip_suffix(".workspace").unwrap_or(key);
    (!name.is_empty() && !name.contains(' ')).then(|| name.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_is_tidy() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        if let Err(problems) = check(root) {
            panic!("tidy problems:\n{}", problems.join("\n"));
        }
    }

    #[test]
    fn parses_dependency_lines() {
        assert_eq!(
            dependency_name("amboy-core.workspace = true").as_deref(),
            Some("amboy-core")
        );
        assert_eq!(
            dependency_name(r#"tokio = { workspace = true }"#).as_deref(),
            Some("tokio")
        );
        assert_eq!(dependency_name("no equals sign"), None);
    }

    #[test]
    fn reads_member_paths() {
        let manifest = "[workspace]\nmembers = [\n    \"crates/a\",\n    \"xtask\",\n]\n";
        assert_eq!(member_paths(manifest), ["crates/a", "xtask"]);
    }

    #[test]
    fn catches_a_forbidden_edge() {
        let dir = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let crate_dir = dir.join("crates/amboy-runner");
        fs::create_dir_all(crate_dir.join("src")).unwrap();
        fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\nmembers = [\"crates/amboy-runner\", \"crates/amboy-queue-local\"]\n",
        )
        .unwrap();
        fs::write(
            crate_dir.join("Cargo.toml"),
            "[package]\nname = \"amboy-runner\"\n[dependencies]\namboy-queue-local.workspace = true\n",
        )
        .unwrap();
        fs::write(crate_dir.join("src/lib.rs"), "fn main() {}\n").unwrap();
        let queue_dir = dir.join("crates/amboy-queue-local");
        fs::create_dir_all(&queue_dir).unwrap();
        fs::write(
            queue_dir.join("Cargo.toml"),
            "[package]\nname = \"amboy-queue-local\"\n[lints]\nworkspace = true\n",
        )
        .unwrap();
        let problems = check(&dir).unwrap_err();
        let _ = fs::remove_dir_all(&dir);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("amboy-runner must not depend on amboy-queue-local")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("amboy-runner: add `[lints] workspace = true`")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("amboy-runner: lib.rs must open with")),
            "{problems:?}"
        );
    }
}

//! The house in order: `scripts/layers` (run first by `scripts/test`) passes on `src/` and fails
//! on a planted import circle, between layers or inside one; no file under `src/` is longer
//! than a person can hold in their head.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn layers(src: &Path) -> Output {
    Command::new("python3")
        .arg(repo().join("scripts/layers"))
        .arg("--src")
        .arg(src)
        .output()
        .expect("python3 runs scripts/layers")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of `src/` with `line` put at the top of `file` (a path under `src/`).
fn planted(dir: &Path, file: &str, line: &str) -> PathBuf {
    let src = dir.join("src");
    copy_tree(&repo().join("src"), &src);
    let path = src.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{line}\n{text}")).unwrap();
    src
}

#[test]
fn src_has_no_import_circle() {
    let out = layers(&repo().join("src"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("no import circles"), "{stdout}");
}

#[test]
fn a_circle_between_layers_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    // config is below the pipeline catalog: config naming it closes a circle.
    let src = planted(
        dir.path(),
        "config/secrets.rs",
        "use crate::pipeline::catalog::rules;",
    );
    let out = layers(&src);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("circle between layers"), "{stdout}");
    assert!(
        stdout.contains("crate::config::secrets -> crate::pipeline::catalog"),
        "the tie is named: {stdout}"
    );
}

#[test]
fn a_circle_inside_a_layer_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    // settle is below the message lifecycle that calls it.
    let src = planted(
        dir.path(),
        "engine/settle.rs",
        "use super::message::Leased;",
    );
    let out = layers(&src);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("circle inside engine"), "{stdout}");
    assert!(
        stdout.contains("crate::engine::settle -> crate::engine::message: Leased"),
        "{stdout}"
    );
}

#[test]
fn no_source_file_is_over_600_lines() {
    fn walk(dir: &Path, long: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, long);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                if lines > 600 {
                    long.push(format!("{} ({lines} lines)", path.display()));
                }
            }
        }
    }
    let mut long = Vec::new();
    walk(&repo().join("src"), &mut long);
    assert!(
        long.is_empty(),
        "split these by responsibility: {}",
        long.join(", ")
    );
}

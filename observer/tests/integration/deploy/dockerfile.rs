//! The image.

use super::{read, repo};

/// Dockerfile instructions: (keyword, arguments), continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&repo().join("deploy/Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (kw, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((kw.to_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_what_the_repository_holds() {
    let ins = dockerfile();
    let stages: Vec<(usize, &str)> = ins
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, (_, a))| (i, a.as_str()))
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    let stage_name = |a: &str| {
        let w: Vec<&str> = a.split_whitespace().collect();
        match w.as_slice() {
            [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
            _ => None,
        }
    };
    let builder = stage_name(stages[0].1).expect("the first stage is named");
    let runtime_start = stages.last().unwrap().0;
    let (build, runtime) = ins.split_at(runtime_start);

    // The builder mirrors `cargo xtask setup`: nightly rust-src and the
    // same bpf-linker, built against the nightly's LLVM.
    let setup = read(&repo().join("xtask/src/setup.rs"));
    let linker_version = setup
        .split("BPF_LINKER_VERSION: &str = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("xtask's bpf-linker version");
    let all = |k: &str| -> Vec<&str> {
        build
            .iter()
            .filter(|(kw, _)| kw == k)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(
        all("ARG")
            .iter()
            .any(|a| *a == format!("BPF_LINKER_VERSION={linker_version}")),
        "the Dockerfile's bpf-linker is xtask's {linker_version}"
    );
    let runs = all("RUN").join("\n");
    for needle in [
        "rust-src",
        "nightly",
        "cargo install bpf-linker",
        "LLVM_PREFIX",
        "--features \"llvm-$major\"",
        "cargo build --release",
        "-p observer",
    ] {
        assert!(runs.contains(needle), "builder RUN lacks {needle:?}");
    }
    // Every path copied from the build context exists.
    for a in all("COPY") {
        let words: Vec<&str> = a
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (dest, sources) = words.split_last().expect("COPY args");
        assert!(!dest.is_empty());
        for s in sources {
            assert!(repo().join(s).exists(), "COPY {s}: not in the repository");
        }
    }
    // The workspace's members are all there (cargo needs every one).
    let ws = read(&repo().join("Cargo.toml"));
    let copied = all("COPY").join(" ");
    for member in ["observer", "observer-common", "observer-ebpf", "xtask"] {
        assert!(ws.contains(&format!("\"{member}\"")));
        assert!(
            copied.split_whitespace().any(|w| w == member),
            "workspace member {member} is not copied"
        );
    }

    // The runtime stage: only the binary, from the builder, as entrypoint.
    let copies: Vec<&str> = runtime
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(copies.len(), 1, "the runtime copies one thing: {copies:?}");
    let words: Vec<&str> = copies[0].split_whitespace().collect();
    assert_eq!(words[0], format!("--from={builder}"));
    let binary = *words.last().unwrap();
    let entry = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a)
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
    assert_eq!(entry, [binary]);
    assert!(runtime.iter().any(|(k, a)| k == "EXPOSE" && a == "9477"));
    let ignore = read(&repo().join("deploy/Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

//! Stamps the binary with the commit it was built from: `RELAY_COMMIT` for `relay --version`
//! and the `relay_build_info` metric.
//!
//! Where it comes from, first that answers:
//! 1. the `RELAY_BUILD_COMMIT` environment variable (the container build passes it as a build
//!    argument, since the image's build context leaves `.git` out);
//! 2. `git rev-parse --short=12 HEAD` in this checkout;
//! 3. `unknown` (a source tarball, no git installed).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RELAY_BUILD_COMMIT");
    let commit = std::env::var("RELAY_BUILD_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RELAY_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (checkout), the branch it points to (commit), and
    // packed-refs (gc). Paths come from git so worktrees work too.
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for p in watch.into_iter().flatten() {
        let p = PathBuf::from(p);
        let p = if p.is_absolute() {
            p
        } else {
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join(p)
        };
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    Some(commit)
}

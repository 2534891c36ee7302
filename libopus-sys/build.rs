//! Compiles the vendored libopus (opus/, release 1.6.1, BSD-3-Clause) with the `cc` crate.
//!
//! Why vendored + cc: every libopus binding on crates.io builds it with cmake or links a
//! system libopus (`libopus-dev`); the relay must build with nothing but a Rust toolchain and a
//! C compiler (README's first command on a fresh Debian machine). The source lists come from
//! libopus's own `*_sources.mk`, so an update is: copy the new release's include/, celt/, silk/,
//! silk/float/, src/ and the .mk files over these.
//!
//! Configuration: floating point (the default libopus build), C99 variable-length arrays for
//! scratch memory (`VAR_ARRAYS`: on the stack, so encode/decode never call malloc), no
//! run-time CPU dispatch or intrinsics (portable C, what `--disable-intrinsics --disable-rtcd`
//! builds), none of the optional DNN features (deep PLC, DRED, OSCE) nor QEXT.

use std::path::Path;

fn sources(mk: &str, var: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new("opus").join(mk)).expect("read a .mk list");
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if !inside {
            inside = l.starts_with(var) && l[var.len()..].trim_start().starts_with('=');
            continue;
        }
        let name = l.trim_end_matches('\\').trim();
        if !name.is_empty() {
            out.push(name.to_string());
        }
        if !l.ends_with('\\') {
            break;
        }
    }
    assert!(!out.is_empty(), "{var} not found in {mk}");
    out
}

fn main() {
    println!("cargo:rerun-if-changed=opus");
    println!("cargo:rerun-if-changed=build.rs");
    let mut files = sources("celt_sources.mk", "CELT_SOURCES");
    files.extend(sources("silk_sources.mk", "SILK_SOURCES"));
    files.extend(sources("silk_sources.mk", "SILK_SOURCES_FLOAT"));
    files.extend(sources("opus_sources.mk", "OPUS_SOURCES"));
    files.extend(sources("opus_sources.mk", "OPUS_SOURCES_FLOAT"));

    let mut build = cc::Build::new();
    build
        .files(files.iter().map(|f| Path::new("opus").join(f)))
        .include("opus/include")
        .include("opus/celt")
        .include("opus/silk")
        .include("opus/silk/float")
        .include("opus/src")
        .define("OPUS_BUILD", None)
        .define("VAR_ARRAYS", None)
        .define("HAVE_LRINTF", None)
        .define("HAVE_LRINT", None)
        .define("HAVE_STDINT_H", None)
        .define("PACKAGE_VERSION", "\"1.6.1\"")
        .flag_if_supported("-std=gnu99")
        .flag_if_supported("-fvisibility=hidden")
        .warnings(false)
        // Dependencies build at opt-level 2 in dev (the workspace profile); the codec should
        // run at release speed in tests too.
        .opt_level(2);
    build.compile("opus");
}

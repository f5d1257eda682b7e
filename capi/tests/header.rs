//! include/eigenlorax.h is generated from capi/src/lib.rs by cbindgen and committed; this
//! test regenerates it and fails when the committed header differs (CI runs it).
//! `ELX_BLESS=1 cargo test -p eigenlorax-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = crate_dir.join("../include/eigenlorax.h");
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen parses capi/src/lib.rs")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("utf-8 header");
    if std::env::var_os("ELX_BLESS").is_some() {
        std::fs::write(&committed, &fresh).expect("write include/eigenlorax.h");
        return;
    }
    let old = std::fs::read_to_string(&committed).unwrap_or_default();
    if old != fresh {
        let first = old
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(old.lines().count().min(fresh.lines().count()));
        panic!(
            "include/eigenlorax.h differs from the code from line {} on; regenerate it with \
             ELX_BLESS=1 cargo test -p eigenlorax-capi --test header, and commit it",
            first + 1
        );
    }
}

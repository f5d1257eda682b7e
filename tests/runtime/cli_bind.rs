//! `elx bind` end to end on the tiny BERT fixture.

use eigenlorax::adapter::Adapter;
use eigenlorax::bundle::{Bundle, StorageDtype};
use eigenlorax::subspace::{ExtractOptions, extract};
use std::path::Path;
use std::process::Command;

#[test]
fn elx_bind_stores_the_binding_and_keeps_the_subspace_id() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures");
    let dir = std::env::temp_dir().join(format!("elx-rt-cli-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let adapters: Vec<Adapter> = (0..3)
        .map(|i| Adapter::open(&root.join(format!("adapters/task{i}"))).expect("adapter"))
        .collect();
    let sub = extract(&adapters, &ExtractOptions::default(), &|_, _, _| {}).expect("extract");
    let unbound = dir.join("b.elxb");
    let manifest = Bundle::write(&unbound, &sub, &[], StorageDtype::F16, None).expect("write");
    let base = root.join("tiny-bert/model.onnx");
    let out = dir.join("bound.elxb");

    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(["bind"])
        .arg(&unbound)
        .arg("--base")
        .arg(&base)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run elx");
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success());
    assert!(stdout.contains("bound 4 modules"), "{stdout}");
    let b = Bundle::read(&out).expect("read bound");
    assert_eq!(b.manifest.subspace_id, manifest.subspace_id);
    let binding = b.manifest.binding.expect("binding");
    assert_eq!(
        binding.base_sha256,
        eigenlorax::util::sha256_file(&base).expect("hash")
    );
    assert_eq!(
        binding.modules["encoder.layer.1.attention.self.value"].node,
        "/encoder/layer.1/attention/self/value/MatMul"
    );

    // A user map naming a node that does not exist: a clear error, non-zero exit.
    let map = dir.join("map.json");
    // `elx bind UNBOUND --base BASE --map MAP`: (success, stderr).
    let bind_with_map = || {
        let o = Command::new(env!("CARGO_BIN_EXE_elx"))
            .arg("bind")
            .arg(&unbound)
            .arg("--base")
            .arg(&base)
            .arg("--map")
            .arg(&map)
            .output()
            .expect("run elx");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    std::fs::write(
        &map,
        r#"{"encoder.layer.0.attention.self.query": "/no/such/node"}"#,
    )
    .expect("map");
    let (ok, stderr) = bind_with_map();
    println!("{stderr}");
    assert!(!ok);
    assert!(
        stderr.contains("/no/such/node") && stderr.contains("encoder.layer.0.attention.self.query"),
        "{stderr}"
    );
    // The failed bind left the input bundle unbound.
    assert!(
        Bundle::read(&unbound)
            .expect("read")
            .manifest
            .binding
            .is_none()
    );
    // A map that is not JSON.
    std::fs::write(&map, "query = /x").expect("map");
    let (ok, stderr) = bind_with_map();
    assert!(
        !ok && stderr.contains("map.json") && stderr.contains("JSON object"),
        "{stderr}"
    );
}

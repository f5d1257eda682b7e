//! Every metadata type written and read back.

use crate::support::Writer;
use crate::{NAME, all_metadata, parse, with_metadata};

#[test]
fn every_metadata_type_round_trips() {
    for version in [2, 3] {
        let w = with_metadata(Writer {
            version,
            ..Writer::default()
        });
        let g = parse(w.bytes()).unwrap();
        assert_eq!(g.version(), version);
        assert_eq!(g.alignment(), 32);
        assert!(g.tensors().is_empty());
        let want = all_metadata();
        assert_eq!(g.metadata().len(), want.len());
        for ((k, v), (gk, gv)) in want.iter().zip(g.metadata()) {
            assert_eq!(k, gk);
            assert_eq!(v, gv, "{k}");
            assert_eq!(g.get(k), Some(v));
        }
        // Typed accessors, with integer widening and range checks.
        assert_eq!(g.u32("u8").unwrap(), 200);
        assert_eq!(g.u32("u16").unwrap(), 60000);
        assert_eq!(g.u32("u32").unwrap(), 4_000_000_000);
        assert_eq!(g.u64("u64").unwrap(), u64::MAX);
        assert_eq!(g.i64("i64").unwrap(), i64::MIN);
        assert_eq!(g.i64("i8").unwrap(), -100);
        assert_eq!(g.f32("f32").unwrap(), 1.5e-5);
        assert!(g.bool("bool.t").unwrap() && !g.bool("bool.f").unwrap());
        assert_eq!(g.str("str").unwrap(), "héllo <|im_start|>");
        assert_eq!(g.strings("a.str").unwrap(), ["a", "", "Ġthe"]);
        assert_eq!(g.i32s("a.i32").unwrap(), [-1, 0, 1]);
        assert_eq!(g.f32s("a.f32").unwrap(), [0.5, -0.25]);
        assert_eq!(g.array("a.bool").unwrap().len(), 3);
        assert!(g.array("a.empty").unwrap().is_empty());
        // Wrong type, out of range, absent: errors naming file and key.
        for (r, key, want) in [
            (g.u32("i32").map(|_| ()), "i32", "u32 range"),
            (g.u32("u64").map(|_| ()), "u64", "out of range"),
            (
                g.u32("str").map(|_| ()),
                "str",
                "found a value of type string",
            ),
            (
                g.str("u8").map(|_| ()),
                "u8",
                "expected a string value, found a value of type u8",
            ),
            (
                g.strings("a.u8").map(|_| ()),
                "a.u8",
                "found a value of type array of u8",
            ),
            (g.f32("bool.t").map(|_| ()), "bool.t", "f32 or f64"),
            (g.bool("nope").map(|_| ()), "nope", "found none"),
        ] {
            let msg = r.unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("{NAME}: tensor `{key}`")) && msg.contains(want),
                "{msg}"
            );
        }
    }
}

//! [`engine_call`]: every call into an engine (tract or ONNX Runtime) goes through it, so that
//! a panic inside the engine becomes an error instead of ending the process.

use crate::error::{Error, Result};

/// Runs one call into an engine (tract or ONNX Runtime) so that a panic inside it becomes
/// [`Error::Engine`] naming `what` instead of ending the process. Defence in depth: inputs
/// are checked before they reach an engine ([`crate::graph::check`], [`crate::serve::input::
/// check_inputs`]); this catches what the checks do not foresee. A build with
/// `panic = "abort"` (the `dist` profile) still aborts.
pub fn engine_call<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let caught = crate::util::CatchingPanics::enter();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(caught);
    match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(Error::Engine(format!(
                "{what} panicked inside the engine: {msg}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_an_engine_call_becomes_a_named_engine_error() {
        assert!(!crate::util::panics_are_caught());
        let r: Result<()> = engine_call("tract run", || {
            // The panic hook of `elx` stays silent here: the error reports the panic.
            assert!(crate::util::panics_are_caught());
            panic!("index exceeds length")
        });
        assert!(!crate::util::panics_are_caught());
        match r {
            Err(Error::Engine(m)) => {
                assert!(
                    m.contains("tract run") && m.contains("index exceeds length"),
                    "{m}"
                )
            }
            other => panic!("expected Error::Engine, found {other:?}"),
        }
        let ok: Result<u8> = engine_call("tract run", || Ok(7));
        assert_eq!(ok.expect("no panic"), 7);
        let err: Result<u8> = engine_call("tract run", || Err(Error::Usage("u".into())));
        assert!(matches!(err, Err(Error::Usage(_))));
    }
}

//! Regenerates `src/runtime/onnx_pb.rs` (the ONNX protobuf types) from the ONNX schema
//! `onnx.proto`, with prost-build and protox (a pure-Rust protobuf compiler: no protoc).
//!
//! Usage: `cargo run --release -- ONNX_PROTO_DIR OUT_DIR` (see tools/gen_onnx_pb.sh).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [proto_dir, out_dir] = args.as_slice() else {
        eprintln!("usage: onnx-pb-gen ONNX_PROTO_DIR OUT_DIR");
        return ExitCode::FAILURE;
    };
    let fds = match protox::compile([format!("{proto_dir}/onnx.proto")], [proto_dir.as_str()]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {proto_dir}/onnx.proto: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = prost_build::Config::new().out_dir(out_dir).compile_fds(fds) {
        eprintln!("error: generating into {out_dir}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

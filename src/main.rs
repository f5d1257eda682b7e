//! `elx`: the host tool of eigenlorax (see `elx --help`).

mod cli;

use clap::Parser;
use eigenlorax::Error;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_panics();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // `elx inspect B | head -1`: once the reader closes stdout, the next write fails with
        // "Broken pipe". Like the Unix tools, every command then stops quietly with status 0.
        Err(Error::Io { path, source })
            if path.as_os_str() == cli::STDOUT
                && source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // A stderr that cannot be written (`2>/dev/full`) loses the message, not the
            // status: still 1, never a panic.
            let _ = cli::write_to(&mut std::io::stderr().lock(), format_args!("error: {e}\n"));
            let _ = std::io::stderr().flush();
            ExitCode::FAILURE
        }
    }
}

/// The default panic report goes to stderr before any handler sees the panic, so a panic
/// that an engine call catches (`catch_unwind`, turned into `Error::Engine`) printed
/// "thread 'main' panicked at ..." above the clean error. Here the report is written only
/// when the panic is not caught: caught panics are reported by the error they become.
/// `ELX_BACKTRACE=1` (or `RUST_BACKTRACE`) keeps the default report for every panic.
fn quiet_panics() {
    if std::env::var_os("ELX_BACKTRACE").is_some() || std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if eigenlorax::util::panics_are_caught() {
            return;
        }
        default(info);
    }));
}

//! Output formats shared by every command: human tables or JSON.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

/// Set by daemons: their stdout is a status channel that a reader may stop reading,
/// and they go on serving without it.
static DAEMON: AtomicBool = AtomicBool::new(false);

/// This process is a daemon (see [`write_stdout`]).
pub fn set_daemon() {
    DAEMON.store(true, Ordering::Relaxed);
}

/// What `out!`/`outln!` do: write to stdout. When the reader has gone (`metrodr … |
/// head`), a command ends quietly with success, like other Unix tools, and a daemon
/// drops the line. Any other error writing stdout is said on stderr.
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let r = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            if !DAEMON.load(Ordering::Relaxed) {
                std::process::exit(0);
            }
        }
        Err(e) => eprintln!("metrodr: cannot write to stdout: {e}"),
    }
}

/// `print!` that survives a closed stdout (see [`write_stdout`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*), false) };
}

/// `println!` that survives a closed stdout (see [`write_stdout`]).
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*), true) };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables and messages.
    Table,
    /// One JSON document on stdout.
    Json,
}

/// Whether to color text written to stdout (a terminal, and `NO_COLOR` unset).
pub fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A table with the project's look: condensed UTF-8 borders, wrapped to the terminal.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    t
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `used / total (pct%)`.
pub fn ratio(used: u64, total: u64) -> String {
    let pct = if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    };
    format!("{used}/{total} ({pct:.0}%)")
}

/// Sizes: `used / total (pct%)` with binary units.
pub fn size_ratio(used: u64, total: u64) -> String {
    let pct = if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    };
    format!(
        "{} / {} ({pct:.0}%)",
        topology::ids::human_size(used),
        topology::ids::human_size(total)
    )
}

//! A minimal `log` backend for PID 1: one line per record on stderr (the serial console
//! inside the image), prefixed with the time since boot so boot stages can be read off the
//! console. No prompts, completions, keys or plaintext are ever passed to it.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Only our own crates log at info; dependencies are held to warnings so that their
        // debug output (which may describe requests) never reaches the console.
        let ours = record.target().starts_with("chrysalis");
        if !ours && record.level() > log::Level::Warn {
            return;
        }
        let line = format!("[{:10.6}] {:<5} {}: {}\n", crate::sys::uptime(), record.level(), record.target(), record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger; later calls only change the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

//! Output that survives a closed pipe: `kho demo | head`, `kho inspect --json | head -c 100`.
//!
//! Rust ignores `SIGPIPE`, so a write to a closed pipe returns `EPIPE`, and `println!`
//! panics on it. Everything the tool prints goes through [`out`] / [`err`] instead (the
//! [`outln!`](crate::outln) and [`errln!`](crate::errln) macros): the first failed write marks
//! the stream gone, later writes are dropped, and the command finishes its work and exits with
//! the status it would have had. Nothing panics and nothing is reported twice.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

fn write_to(w: &mut dyn Write, gone: &AtomicBool, args: fmt::Arguments<'_>) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    if w.write_fmt(args).is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

/// Writes to standard output; a closed pipe (or any write error) silences it from then on.
pub fn out(args: fmt::Arguments<'_>) {
    write_to(&mut io::stdout().lock(), &STDOUT_GONE, args);
}

/// Writes to standard error, likewise.
pub fn err(args: fmt::Arguments<'_>) {
    write_to(&mut io::stderr().lock(), &STDERR_GONE, args);
}

/// Flushes standard output (before an exec or an exit).
pub fn flush() {
    if io::stdout().lock().flush().is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
    let _ = io::stderr().lock().flush();
}

/// True once a write to standard output has failed.
#[must_use]
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// Standard output as an `io::Write` for streaming serializers: after `EPIPE` it swallows
/// everything (reporting success), so a serializer runs to the end without an error to handle.
#[derive(Debug)]
pub struct Stdout(io::BufWriter<io::Stdout>);

impl Stdout {
    /// A buffered handle.
    #[must_use]
    pub fn new() -> Self {
        Self(io::BufWriter::with_capacity(64 << 10, io::stdout()))
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if stdout_gone() {
            return Ok(buf.len());
        }
        match self.0.write(buf) {
            Ok(n) => Ok(n),
            Err(_) => {
                STDOUT_GONE.store(true, Ordering::Relaxed);
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        if !stdout_gone() && self.0.flush().is_err() {
            STDOUT_GONE.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for Stdout {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// `println!` that never panics on a closed pipe.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::out(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` that never panics on a closed pipe.
#[macro_export]
macro_rules! outp {
    ($($t:tt)*) => { $crate::out::out(format_args!($($t)*)) };
}

/// `eprintln!` that never panics on a closed pipe.
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => { $crate::out::err(format_args!("{}\n", format_args!($($t)*))) };
}

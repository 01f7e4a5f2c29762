//! Where each kernel of a run records its report: an anonymous file (a memfd) created by the
//! process that supervises the run and inherited, by descriptor number, by every kernel.
//!
//! It has no name in any directory, so a run that ends any way at all (a verdict, Ctrl-C,
//! SIGTERM, a next kernel that fails or never starts) leaves nothing behind. Nothing about it
//! is read from simulated RAM: a kernel learns its descriptor from its command line, which
//! its trusted parent wrote.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use rustix::io::FdFlags;

use crate::SimError;
use crate::kernel::KernelReport;
use crate::ram::{adopt_inherited_fd, anonymous_file};

/// Largest results file read back (a kernel's report is a few KiB; 1000 kexecs fit easily).
pub const MAX_RESULTS_BYTES: u64 = 64 << 20;

/// The run's results: one JSON line per kernel.
#[derive(Debug)]
pub struct Results {
    file: File,
}

impl Results {
    /// A new, empty, anonymous results file.
    ///
    /// # Errors
    /// [`SimError::Ram`] if no anonymous file can be created.
    pub fn create() -> Result<Self, SimError> {
        Ok(Self { file: File::from(anonymous_file("kho-results")?) })
    }

    /// Adopts the results file a parent kernel left open across `exec()`.
    ///
    /// # Errors
    /// [`SimError::Ram`] if `fd` is not open.
    pub fn from_inherited_fd(fd: RawFd) -> Result<Self, SimError> {
        Ok(Self { file: File::from(adopt_inherited_fd(fd, "results")?) })
    }

    /// Clears `FD_CLOEXEC` so the next process (spawned or exec'd) inherits the file; returns
    /// its number for that process's command line.
    ///
    /// # Errors
    /// [`SimError::Io`] if `fcntl` fails.
    pub fn inherit_fd(&self) -> Result<RawFd, SimError> {
        rustix::io::fcntl_setfd(&self.file, FdFlags::empty())
            .map_err(|e| SimError::Io(format!("cannot clear FD_CLOEXEC on the results file: {e}")))?;
        Ok(self.file.as_raw_fd())
    }

    /// Appends one kernel's report.
    ///
    /// # Errors
    /// [`SimError::Io`].
    pub fn append(&self, rep: &KernelReport) -> Result<(), SimError> {
        let mut line = serde_json::to_vec(rep).map_err(|e| SimError::Io(e.to_string()))?;
        line.push(b'\n');
        let end = self.len()?;
        if end.saturating_add(line.len() as u64) > MAX_RESULTS_BYTES {
            return Err(SimError::Io(format!("results file would grow past {MAX_RESULTS_BYTES} bytes")));
        }
        self.file.write_all_at(&line, end).map_err(|e| SimError::Io(format!("results file: {e}")))?;
        (&self.file).flush().map_err(|e| SimError::Io(format!("results file: {e}")))
    }

    fn len(&self) -> Result<u64, SimError> {
        Ok(self.file.metadata().map_err(|e| SimError::Io(format!("results file: {e}")))?.len())
    }

    /// Every report recorded so far, in order.
    ///
    /// # Errors
    /// [`SimError::Io`] if the file is unreadable, too large, or holds a line that is not a
    /// report.
    pub fn read_all(&self) -> Result<Vec<KernelReport>, SimError> {
        let len = self.len()?;
        if len > MAX_RESULTS_BYTES {
            return Err(SimError::Io(format!("results file is {len} bytes, more than {MAX_RESULTS_BYTES}")));
        }
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.file.read_exact_at(&mut buf, 0).map_err(|e| SimError::Io(format!("results file: {e}")))?;
        let text = String::from_utf8(buf).map_err(|_| SimError::Io("results file is not UTF-8".into()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| SimError::Io(format!("results file: {e}"))))
            .collect()
    }
}

impl From<Results> for OwnedFd {
    fn from(r: Results) -> Self {
        OwnedFd::from(r.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_reads_back_in_order() {
        let r = Results::create().unwrap();
        assert!(r.read_all().unwrap().is_empty());
        for g in 0..3 {
            r.append(&KernelReport { generation: g, boot: "kho".into(), ..KernelReport::default() }).unwrap();
        }
        let back = r.read_all().unwrap();
        assert_eq!(back.iter().map(|k| k.generation).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(Results::from_inherited_fd(-1).is_err());
    }
}

//! kho-cli's ELF core reader (`memsrc::elf::open`) on arbitrary files. kho-cli is a binary
//! crate, so its `memsrc` module is compiled here by path. Invariants: no panic, every error
//! displays, and reads from the resulting memory source fail cleanly instead of panicking.
#![no_main]

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../crates/kho-cli/src/memsrc/mod.rs"]
mod memsrc;

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use kho_core::{PhysAddr, PhysRead};
use libfuzzer_sys::fuzz_target;

fn scratch_file() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        dir.join(format!("kho-fuzz-elf-{}.core", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch_file();
    {
        let mut f = std::fs::File::create(path).expect("temp file");
        f.write_all(data).expect("write temp file");
    }
    match memsrc::elf::open(path) {
        Ok(m) => {
            let _ = format!("{m:?}");
            let mut buf = [0u8; 64];
            for r in m.ram() {
                let _ = m.read_phys(r.start(), &mut buf);
                let last = PhysAddr::new(r.end().as_u64().saturating_sub(32));
                let _ = m.read_phys(last, &mut buf);
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});

//! Whole kexec chains run in one process: each "kernel" gets the previous one's RAM back
//! (the same file and mapping) and its boot block, exactly what an exec would hand it.

use kho_sim::boot::BootBlock;
use kho_sim::kernel::{KernelReport, Observer, SimConfig, Stage, run_kernel};
use kho_sim::workload::WorkloadConfig;
use kho_sim::{Ram, ScratchSizes};

struct Quiet;
impl Observer for Quiet {
    fn stage(&mut self, _: u64, _: &Stage) {}
    fn note(&mut self, _: u64, _: &str) {}
    fn progress(&mut self, _: &str, _: u64, _: u64) {}
}

fn cfg(kexecs: u64) -> SimConfig {
    SimConfig {
        ram: 512 << 20,
        workload: WorkloadConfig { guest: 16 << 20, page_cache: 4 << 20, table: 2 << 20, churn_percent: 10 },
        kexecs,
        seed: 7,
        format: "v4".into(),
        bitmap_bytes: 512,
        max_order: 10,
        next_max_order: 10,
        oversized: "reserve".into(),
        scratch: ScratchSizes::default(),
        nodes: 1,
        corrupt: None,
        forget_preserve: false,
        json: false,
        early_pages: 16,
        crash_after: None,
    }
}

fn chain(cfg: &SimConfig) -> Vec<KernelReport> {
    cfg.check().unwrap();
    let mut ram = Ram::create(cfg.ram).unwrap();
    let mut boot: Option<BootBlock> = None;
    let mut out = Vec::new();
    loop {
        let o = run_kernel(ram, boot.as_ref(), cfg, &mut Quiet).unwrap();
        out.push(o.report);
        match o.next {
            Some(r) => {
                boot = Some(BootBlock::read(&r).unwrap());
                ram = r;
            }
            None => return out,
        }
    }
}

#[test]
fn five_kexecs_keep_every_byte_both_formats() {
    for format in ["v1", "v4"] {
        let mut c = cfg(5);
        c.format = format.into();
        let reps = chain(&c);
        assert_eq!(reps.len(), 6);
        for r in &reps {
            assert!(
                r.ok(),
                "{format} kernel {}: {:?} {:?} {:?}",
                r.generation,
                r.refused,
                r.workload.problems,
                r.conflicts
            );
        }
        for r in &reps[1..] {
            assert_eq!(r.boot, "kho");
            assert_eq!(r.scratch, reps[0].scratch, "scratch reused exactly");
            assert!(r.workload.verified_bytes >= 20 << 20);
        }
        assert!(reps[2..].iter().all(|r| r.workload.released_pages_checked > 0));
    }
}

#[test]
fn an_empty_workload_is_refused_before_anything_runs() {
    let mut c = cfg(1);
    c.workload = WorkloadConfig { guest: 0, page_cache: 0, table: 0, churn_percent: 10 };
    let e = c.check().unwrap_err().to_string();
    assert!(e.contains("workload is empty"), "{e}");
    c.workload.table = 4096;
    assert!(c.check().is_ok());
}

#[test]
fn the_configuration_in_ram_names_no_program_or_file() {
    let c = cfg(1);
    let text = serde_json::to_string(&c).unwrap();
    assert!(!text.contains("next_kernel") && !text.contains("results"), "{text}");
    // A crafted boot block that tries to name the next kernel is refused, not obeyed.
    let crafted = text.replacen('{', "{\"next_kernel\":\"/bin/sh\",", 1);
    let e = serde_json::from_str::<SimConfig>(&crafted).unwrap_err().to_string();
    assert!(e.contains("unknown field `next_kernel`"), "{e}");
}

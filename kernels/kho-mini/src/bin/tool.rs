//! Host tool for the mini kernel.
//!
//! - `kho-mini-tool wrap FLAT INIT_SIZE OUT`: packs the flat kernel image as a bzImage.
//! - `kho-mini-tool pack --kernel BZIMAGE [--initrd FILE] [--cmdline TEXT] OUT`: writes the
//!   payload (the next Linux, its initrd and command line) the mini kernel boots.

use std::process::ExitCode;

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("wrap") => {
            let [_, flat, init_size, out] = args else { return Err("usage: wrap FLAT INIT_SIZE OUT".into()) };
            let flat = std::fs::read(flat).map_err(|e| format!("{flat}: {e}"))?;
            let init: u32 = init_size.parse().map_err(|e| format!("INIT_SIZE {init_size}: {e}"))?;
            std::fs::write(out, kho_mini::bzimage::wrap(&flat, init)).map_err(|e| format!("{out}: {e}"))
        }
        Some("pack") => {
            let (mut kernel, mut initrd, mut cmdline, mut out) = (None, None, String::new(), None);
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--kernel" => kernel = it.next().cloned(),
                    "--initrd" => initrd = it.next().cloned(),
                    "--cmdline" => cmdline = it.next().cloned().unwrap_or_default(),
                    o if out.is_none() && !o.starts_with("--") => out = Some(o.to_string()),
                    o => return Err(format!("unexpected argument {o}")),
                }
            }
            let (Some(kernel), Some(out)) = (kernel, out) else {
                return Err("usage: pack --kernel BZIMAGE [--initrd FILE] [--cmdline TEXT] OUT".into());
            };
            let k = std::fs::read(&kernel).map_err(|e| format!("{kernel}: {e}"))?;
            kho_boot::bzimage::BzImage::parse(&k).map_err(|e| format!("{kernel}: {e}"))?;
            let i = match &initrd {
                Some(p) => std::fs::read(p).map_err(|e| format!("{p}: {e}"))?,
                None => Vec::new(),
            };
            std::fs::write(&out, kho_mini::payload::pack(&k, &i, cmdline.as_bytes())).map_err(|e| format!("{out}: {e}"))
        }
        _ => Err("usage: kho-mini-tool wrap FLAT INIT_SIZE OUT | pack --kernel BZIMAGE [--initrd F] [--cmdline T] OUT"
            .into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kho-mini-tool: {e}");
            ExitCode::from(2)
        }
    }
}

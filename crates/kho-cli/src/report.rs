//! What `kho inspect` and `kho validate` print: one [`Report`], rendered as text or as JSON.
//!
//! The JSON form is a stable interface documented in `docs/cli-json.md`: fields are only ever
//! added, never renamed or removed, within one `schema` number. Every address and size is a
//! JSON number (exact: serde_json writes `u64` without going through floating point).

use std::fmt::Write as _;

use serde::Serialize;

/// Version of the JSON layout; bumped only for incompatible changes.
pub const SCHEMA: u32 = 1;

/// Everything known about one handover.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// `"kho-v1"` or `"kho-v4"`; `null` if the root FDT could not be read.
    pub format: Option<String>,
    /// kho-v1 bitmap size assumed (the format does not record it).
    pub v1_bitmap_bytes: u64,
    /// Maximum order assumed for the next kernel.
    pub max_order: u32,
    /// True when every check passed.
    pub valid: bool,
    /// True for a handover the running kernel has already consumed (live `kho/in`): only the
    /// root FDT, the scratch areas and the blobs were checked; the memory map was not (its
    /// pages are freed at boot), so `preserved`, `ranges` and `orders` are empty.
    pub consumed: bool,
    /// Where the inputs came from.
    pub inputs: Inputs,
    /// The root FDT.
    pub root_fdt: RootFdt,
    /// Sub-blobs, in FDT order.
    pub subtrees: Vec<Subtree>,
    /// Scratch areas, sorted.
    pub scratch: Vec<Range>,
    /// Every preserved block, sorted by address then order (empty above 4096 blocks unless
    /// `--blocks` was given; see `lists_complete`).
    pub preserved: Vec<BlockEntry>,
    /// True when `preserved` and `ranges` list everything (false when left out or cut at
    /// 4096 entries without `--blocks`).
    pub lists_complete: bool,
    /// Preserved memory as sorted, disjoint, coalesced ranges.
    pub ranges: Vec<Range>,
    /// Per-order counts, ascending by order.
    pub orders: Vec<OrderCount>,
    /// Totals.
    pub totals: Totals,
    /// Every problem found; empty when valid.
    pub problems: Vec<Problem>,
    /// Remarks that are not problems (assumptions, skipped input).
    pub notes: Vec<String>,
    /// Content the next kernel would ignore with a warning, as Linux does (e.g. an optional
    /// blob of an unknown version); the handover stays valid.
    pub warnings: Vec<String>,
}

/// Where the inputs came from.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Inputs {
    /// The root FDT: a file path, or `memory` when read at the setup_data address.
    pub fdt: Option<String>,
    /// One line per memory source.
    pub memory: Vec<String>,
    /// RAM the memory sources cover (what range checks accept).
    pub ram: Vec<Range>,
    /// Where the scratch areas came from: `debugfs files`, `setup_data`, or `none`.
    pub scratch: String,
}

/// The root FDT.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RootFdt {
    /// Physical address (`null` if unknown: an FDT file given without `--fdt-phys` or
    /// `--setup-data`).
    pub phys: Option<u64>,
    /// `totalsize` in bytes.
    pub size: u64,
    /// `preserved-memory-map`: first chunk (kho-v1) or radix root (kho-v4).
    pub memory_map: Option<u64>,
    /// Metadata pages the walk visited (chunks and bitmap pages, or radix nodes).
    pub metadata_pages: u64,
}

/// One sub-blob.
#[derive(Debug, Clone, Serialize)]
pub struct Subtree {
    /// Sub-node name.
    pub name: String,
    /// Blob address.
    pub phys: u64,
    /// Blob size in bytes (`null` when a kho-v1 blob could not be read).
    pub size: Option<u64>,
    /// How it was decoded: `fdt`, `kexec-metadata`, `memblock`, `test_kho`, or `binary`.
    pub kind: String,
    /// The decoded content (shape depends on `kind`; see docs/cli-json.md), or `null`.
    pub decoded: Option<serde_json::Value>,
    /// Why decoding failed, if it did.
    pub error: Option<String>,
}

/// A half-open physical range.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `end - start`.
    pub size: u64,
}

impl From<kho_core::PhysRange> for Range {
    fn from(r: kho_core::PhysRange) -> Self {
        Self { start: r.start().as_u64(), end: r.end().as_u64(), size: r.len() }
    }
}

/// One preserved block.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockEntry {
    /// First byte.
    pub phys: u64,
    /// Order (`2^order` pages).
    pub order: u32,
}

/// Blocks of one order.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OrderCount {
    /// The order.
    pub order: u32,
    /// Blocks of that order.
    pub count: u64,
    /// Bytes they cover.
    pub bytes: u64,
}

/// Totals over the preserved set.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Totals {
    /// Blocks.
    pub blocks: u64,
    /// Bytes.
    pub bytes: u64,
    /// 4 KiB pages.
    pub pages: u64,
    /// Coalesced ranges.
    pub ranges: u64,
    /// Blocks whose order is above `max_order`.
    pub oversized_blocks: u64,
}

/// One problem.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A short class ([`kho_core::ErrorClass`]): `fdt`, `pointer`, `cycle`, `overlap`, `order`, `blob`, ...
    pub kind: String,
    /// The full message (names field, address, value found and expectation).
    pub message: String,
}

impl Problem {
    /// A problem from an engine error.
    #[must_use]
    pub fn from_error(e: &kho_core::DecodeError) -> Self {
        Self { kind: e.class().as_str().to_string(), message: e.to_string() }
    }

    /// A problem with a given class.
    #[must_use]
    pub fn new(kind: &str, message: String) -> Self {
        Self { kind: kind.to_string(), message }
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, unit) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    for (name, unit) in UNITS {
        if bytes >= unit {
            #[allow(clippy::cast_precision_loss)] // display only
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

fn range_line(r: &Range) -> String {
    format!("[{:#014x}, {:#014x})  {}", r.start, r.end, size(r.size))
}

impl Report {
    /// The report as pretty JSON (the tool streams it instead; tests use this).
    ///
    /// # Errors
    /// Never in practice (serialization of plain data).
    #[cfg(test)]
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// The human-readable form.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "format:          {}", self.format.as_deref().unwrap_or("(unknown)"));
        if self.format.as_deref() == Some("kho-v1") {
            let _ = writeln!(
                o,
                "v1 bitmap size:  {} bytes (assumed: kho-v1 does not record it; Linux 6.16/6.17 use 512, 6.18 uses 4096)",
                self.v1_bitmap_bytes
            );
        }
        let phys = self.root_fdt.phys.map_or_else(|| "(address unknown)".to_string(), |p| format!("{p:#x}"));
        let _ = writeln!(o, "root FDT:        {phys}, {} bytes", self.root_fdt.size);
        if let Some(m) = self.root_fdt.memory_map {
            let what = if self.format.as_deref() == Some("kho-v1") { "first chunk" } else { "radix root" };
            if self.consumed {
                let _ = writeln!(o, "memory map:      {m:#x} ({what}; not walked: Linux frees it at boot)");
            } else {
                let _ = writeln!(
                    o,
                    "memory map:      {m:#x} ({what}; {} metadata page(s) walked)",
                    self.root_fdt.metadata_pages
                );
            }
        }
        let _ = writeln!(o, "max order:       {} (next kernel)", self.max_order);
        for m in &self.inputs.memory {
            let _ = writeln!(o, "memory:          {m}");
        }

        let _ = writeln!(o, "\nsub-blobs ({}):", self.subtrees.len());
        for s in &self.subtrees {
            let sz = s.size.map_or_else(|| "?".to_string(), |n| n.to_string());
            let _ = writeln!(o, "  {:<16} {:#x}, {sz} bytes, {}", s.name, s.phys, s.kind);
            if let Some(d) = &s.decoded {
                for line in decoded_text(&s.kind, d) {
                    let _ = writeln!(o, "      {line}");
                }
            }
            if let Some(e) = &s.error {
                let _ = writeln!(o, "      cannot decode: {e}");
            }
        }

        let _ = writeln!(o, "\nscratch areas ({}, from {}):", self.scratch.len(), self.inputs.scratch);
        for r in &self.scratch {
            let _ = writeln!(o, "  {}", range_line(r));
        }

        let t = &self.totals;
        if self.consumed {
            let _ = writeln!(o, "\npreserved: not checkable after boot (the memory map's pages are freed)");
        } else {
            let _ = writeln!(
                o,
                "\npreserved: {} block(s), {} ({} pages) in {} range(s)",
                t.blocks,
                size(t.bytes),
                t.pages,
                t.ranges
            );
        }
        for c in &self.orders {
            let over = if c.order > self.max_order { "  (above max order)" } else { "" };
            let _ = writeln!(o, "  order {:>2}: {:>8} block(s)  {:>10}{over}", c.order, c.count, size(c.bytes));
        }
        if !self.ranges.is_empty() {
            let _ = writeln!(o, "ranges:");
            for r in &self.ranges {
                let _ = writeln!(o, "  {}", range_line(r));
            }
        }
        for n in &self.notes {
            let _ = writeln!(o, "note: {n}");
        }
        for w in &self.warnings {
            let _ = writeln!(o, "warning: {w}");
        }
        if self.problems.is_empty() && self.consumed {
            let _ = writeln!(o, "\n{}", crate::live::CONSUMED_MESSAGE);
        } else if self.problems.is_empty() {
            let _ = writeln!(o, "\nvalid: every check passed");
        } else {
            let _ = writeln!(o, "\nINVALID: {} problem(s)", self.problems.len());
            for p in &self.problems {
                let _ = writeln!(o, "  [{}] {}", p.kind, p.message);
            }
        }
        o
    }
}

/// A few lines summarizing a decoded blob.
fn decoded_text(kind: &str, d: &serde_json::Value) -> Vec<String> {
    let get = |k: &str| d.get(k).map(|v| v.to_string()).unwrap_or_default();
    match kind {
        "kexec-metadata" => vec![format!(
            "version {}, previous release {}, kexec count {}",
            get("version"),
            get("previous_release"),
            get("kexec_count")
        )],
        "test_kho" => {
            let decoded = match d.get("folios").and_then(|f| f.as_array()) {
                Some(f) => format!("{} folio(s) decoded", f.len()),
                None => "folios not followed".to_string(),
            };
            vec![format!("nr_folios {}, csum {}, {decoded}", get("nr_folios"), get("csum"))]
        }
        "memblock" => d
            .get("regions")
            .and_then(|r| r.as_array())
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        format!(
                            "reserve_mem {}: start {:#x}, size {:#x}",
                            r.get("name").and_then(|v| v.as_str()).unwrap_or("?"),
                            r.get("start").and_then(serde_json::Value::as_u64).unwrap_or(0),
                            r.get("size").and_then(serde_json::Value::as_u64).unwrap_or(0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        "fdt" => vec![format!("compatible {}", d.get("compatible").map(ToString::to_string).unwrap_or_default())],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(8 << 20), "8 MiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(12), "12 B");
    }

    #[test]
    fn json_has_the_documented_top_level_fields() {
        let r = Report {
            schema: SCHEMA,
            format: Some("kho-v4".into()),
            preserved: vec![BlockEntry { phys: 0x18_2000, order: 0 }],
            ..Report::default()
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        for k in
            ["schema", "format", "v1_bitmap_bytes", "subtrees", "scratch", "ranges", "orders", "totals", "problems"]
        {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["preserved"][0]["phys"], serde_json::json!(0x18_2000u64));
        assert!(r.to_text().contains("format:          kho-v4"));
    }
}

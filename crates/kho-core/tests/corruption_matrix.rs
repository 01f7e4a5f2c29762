//! Corruption matrix: every field of every structure of a real handover, set to hostile
//! values, one at a time.
//!
//! For each format (kho-v1 with 512-byte bitmaps, kho-v1 with 4096-byte bitmaps, kho-v4) a
//! handover is built by `Kho` on a `TestPlatform`: 260 order-0 blocks spread so that each
//! needs its own bitmap (so kho-v1 has a two-chunk list for order 0), folios of orders 1, 3,
//! 9 and 10, a `preserve_pages` range that splits into many orders, and two FDT sub-blobs.
//!
//! The fields are not listed case by case. Each structure has a layout description (a table
//! of `FieldDesc` rows: offset, width, the `Field` errors name, and what kind of value it
//! holds), and the sites are found by following the real pointers from the handover pointer:
//! the `kho_data` payload, every scratch entry, the root FDT's properties and every
//! sub-node's, every chunk header and entry of the kho-v1 list plus every non-zero bitmap
//! word, and every table entry (used ones, one empty slot per node, and a root slot beyond
//! the key width) and non-zero leaf word of the kho-v4 radix tree. A new field is covered by
//! adding one row.
//!
//! Each site gets every hostile value its kind admits (0, all ones, +1, -1, +8, +0x800, a
//! scratch address, the FDT page, outside RAM, the structure itself, an earlier chunk/node,
//! a sub-blob; order and count limits; FDT property removal and truncation; compatible
//! strings). For each case `Handover::parse` must return the error the expectation table
//! names for that (field, value class), variant and `Field` both, or, where the table allows
//! it, a handover whose reserved ranges all lie inside RAM and outside scratch. The work is
//! bounded by structure, not by a clock: every memory-map walk is re-run through a
//! `WalkContext` and its visited-page count must stay within two pages of the clean walk.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::{offset_of, size_of};
use std::panic::{AssertUnwindSafe, catch_unwind};

use kho_core::fdt::{FdtNode, FdtTree};
use kho_core::format::{BitmapBytes, FormatVersion, Limits, WalkContext, abi, root, v1, v4};
use kho_core::testing::{RecordingMap, TestPlatform};
use kho_core::{
    Block, BlockSet, DecodeError, DecodeErrorKind, Field, Handover, HandoverPtr, IncomingConfig, Kho, Order,
    OutgoingConfig, PAGE_SIZE, Pfn, PhysAddr, PhysRange, PhysRead, PhysWrite,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// RAM is one range, `[1 MiB, 40 GiB)`, so address 0 is outside it.
const RAM: (u64, u64) = (MIB, 40 * GIB);
/// Two scratch areas: one low (128 MiB aligned), one high.
const SCRATCH: [(u64, u64); 2] = [(256 * MIB, 16 * MIB), (36 * GIB, 64 * MIB)];
/// Metadata pages (bitmaps, chunks, radix nodes, FDT page, scratch array).
const POOL: (u64, u64) = (64 * MIB, 64 * MIB);
/// An aligned address far outside RAM.
const OUTSIDE_RAM: u64 = 1 << 40;
const BLOB_A: u64 = 768 * MIB;
const BLOB_B: u64 = 768 * MIB + 64 * KIB;
/// Order-0 blocks, each in its own bitmap: more than one chunk's worth (255).
const STRIDED: u64 = 260;
const MAX_ORDER: u32 = 10;
/// Fewest cases each kho-v1 matrix must run (docs/robustness.md quotes the printed counts).
const V1_CASE_FLOOR: usize = 7000;
/// Fewest cases the kho-v4 matrix must run.
const V4_CASE_FLOOR: usize = 2300;

fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}
fn ram() -> Vec<PhysRange> {
    vec![range(RAM.0, RAM.1 - RAM.0)]
}
fn scratch() -> Vec<PhysRange> {
    SCRATCH.iter().map(|&(s, l)| range(s, l)).collect()
}
fn pfn_of(phys: u64) -> Pfn {
    PhysAddr::new(phys).pfn().unwrap()
}
fn order(n: u32) -> Order {
    Order::new(n).unwrap()
}

// ---- layout descriptions -------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    U32,
    U64,
}

/// What a field holds, which decides the hostile values it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A physical address of another structure.
    Pointer,
    /// A byte count.
    Size,
    /// The address bit 0 of a bitmap stands for.
    Base,
    /// A page order.
    Order,
    /// An element count.
    Count,
    /// Bitmap bits (kho-v1 bitmap words, kho-v4 leaf words).
    Bits,
    /// A string (the root `compatible`).
    Str,
}

/// One field of one in-memory structure.
#[derive(Clone, Copy, Debug)]
struct FieldDesc {
    name: &'static str,
    offset: u64,
    width: Width,
    field: Field,
    kind: Kind,
}

const fn fd(name: &'static str, offset: u64, width: Width, field: Field, kind: Kind) -> FieldDesc {
    FieldDesc { name, offset, width, field, kind }
}

/// A field of an ABI type: offset and width taken from the type itself (`kho_core::format::abi`),
/// so the matrix cannot drift from the layout the decoders use.
macro_rules! abi_field {
    ($name:literal, $ty:ty, $f:ident, $field:expr, $kind:expr) => {{
        let width = match size_of_field(|t: &$ty| &t.$f) {
            4 => Width::U32,
            8 => Width::U64,
            _ => panic!("unexpected field width"),
        };
        fd($name, offset_of!($ty, $f) as u64, width, $field, $kind)
    }};
}

/// The size of the field a projection returns (the closure is never called).
const fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// `struct kho_data` (x86 setup_data payload; the same four values DT passes in `/chosen`).
const KHO_DATA: &[FieldDesc] = &[
    abi_field!("kho_data.fdt_addr", abi::KhoData, fdt_addr, Field::RootFdt, Kind::Pointer),
    abi_field!("kho_data.fdt_size", abi::KhoData, fdt_size, Field::RootFdt, Kind::Size),
    abi_field!("kho_data.scratch_addr", abi::KhoData, scratch_addr, Field::ScratchArray, Kind::Pointer),
    abi_field!("kho_data.scratch_size", abi::KhoData, scratch_size, Field::ScratchArray, Kind::Size),
];
/// `struct kho_scratch`, repeated every 16 bytes.
const SCRATCH_ENTRY: &[FieldDesc] = &[
    abi_field!("kho_scratch.addr", abi::KhoScratch, addr, Field::ScratchEntry, Kind::Pointer),
    abi_field!("kho_scratch.size", abi::KhoScratch, size, Field::ScratchEntry, Kind::Size),
];
const SCRATCH_STRIDE: u64 = size_of::<abi::KhoScratch>() as u64;
/// `khoser_mem_chunk_hdr`.
const CHUNK_HEADER: &[FieldDesc] = &[
    abi_field!("chunk.hdr.next", abi::ChunkHeader, next, Field::ChunkNext, Kind::Pointer),
    abi_field!("chunk.hdr.order", abi::ChunkHeader, order, Field::ChunkOrder, Kind::Order),
    abi_field!("chunk.hdr.num_elms", abi::ChunkHeader, num_elms, Field::ChunkNumElms, Kind::Count),
];
/// `khoser_mem_bitmap_ptr`, repeated every 16 bytes after the header.
const CHUNK_ENTRY: &[FieldDesc] = &[
    abi_field!("chunk.bitmaps[i].phys_start", abi::BitmapPtr, phys_start, Field::ChunkPhysStart, Kind::Base),
    abi_field!("chunk.bitmaps[i].bitmap", abi::BitmapPtr, bitmap, Field::ChunkBitmap, Kind::Pointer),
];
const CHUNK_ENTRIES_AT: u64 = offset_of!(abi::Chunk, bitmaps) as u64;
const CHUNK_ENTRY_STRIDE: u64 = size_of::<abi::BitmapPtr>() as u64;
/// One word of a kho-v1 bitmap.
const V1_BITMAP_WORD: &[FieldDesc] = &[fd("bitmap word", 0, Width::U64, Field::Block, Kind::Bits)];
/// One entry of a `kho_radix_node` table.
const RADIX_TABLE_ENTRY: &[FieldDesc] = &[fd("radix table[i]", 0, Width::U64, Field::RadixEntry, Kind::Pointer)];
/// One word of a `kho_radix_leaf`.
const RADIX_LEAF_WORD: &[FieldDesc] = &[fd("radix leaf word", 0, Width::U64, Field::RadixKey, Kind::Bits)];

/// A property of the root FDT (`node` None) or of every sub-node (`node` Some("*")).
#[derive(Clone, Copy, Debug)]
struct PropDesc {
    prop: &'static str,
    subnode: bool,
    field: Field,
    kind: Kind,
    formats: &'static [FormatVersion],
}

const BOTH: &[FormatVersion] = &[FormatVersion::V1, FormatVersion::V4];
const FDT_PROPS: &[PropDesc] = &[
    PropDesc { prop: "compatible", subnode: false, field: Field::Compatible, kind: Kind::Str, formats: BOTH },
    PropDesc {
        prop: "preserved-memory-map",
        subnode: false,
        field: Field::PreservedMemoryMap,
        kind: Kind::Pointer,
        formats: BOTH,
    },
    PropDesc {
        prop: "fdt",
        subnode: true,
        field: Field::SubtreeData,
        kind: Kind::Pointer,
        formats: &[FormatVersion::V1],
    },
    PropDesc {
        prop: "preserved-data",
        subnode: true,
        field: Field::SubtreeData,
        kind: Kind::Pointer,
        formats: &[FormatVersion::V4],
    },
    PropDesc {
        prop: "blob-size",
        subnode: true,
        field: Field::SubtreeSize,
        kind: Kind::Size,
        formats: &[FormatVersion::V4],
    },
];

// ---- sites: every instance of every field, found by following the real pointers -----------

#[derive(Clone, Debug)]
enum Loc {
    /// Offset into the 32-byte `kho_data` payload.
    Payload(u64),
    /// A physical address.
    Phys(u64),
    /// A property of the root FDT (`node` None) or of one sub-node.
    Prop { node: Option<String>, prop: &'static str },
}

/// Extra facts about a site that the expectation table needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Plain,
    /// The last chunk's `next` (already NULL).
    LastChunkNext,
    /// `num_elms` of a full chunk (255 entries).
    FullChunkCount,
    /// A used table entry whose child is a table.
    TableToTable,
    /// A used table entry whose child is a leaf.
    TableToLeaf,
    /// An empty table slot inside the key width; `leaf` if its child would be a leaf.
    EmptySlot {
        leaf: bool,
    },
    /// A root slot beyond the key width.
    BeyondKeyWidth,
}

#[derive(Clone, Debug)]
struct Site {
    what: String,
    loc: Loc,
    width: Width,
    field: Field,
    kind: Kind,
    role: Role,
    /// The structure the field belongs to ("at itself").
    itself: Option<u64>,
    /// An earlier structure of the same walk (first chunk, radix root).
    earlier: Option<u64>,
    /// A sub-blob other than this site's own.
    blob: u64,
    /// True for fields of the memory-map walk (its page count is checked).
    in_walk: bool,
}

struct Fixture {
    name: &'static str,
    plat: TestPlatform,
    format: FormatVersion,
    bitmap: BitmapBytes,
    ptr: HandoverPtr,
    fdt_page: Vec<u8>,
    want: BTreeSet<Block>,
}

fn blob_dtb(name: &str) -> Vec<u8> {
    FdtTree { root: FdtNode::new("").prop_str("compatible", name).prop("payload", &[0x5a; 64]) }.to_dtb().unwrap()
}

fn build(name: &'static str, format: FormatVersion, bitmap: BitmapBytes) -> Fixture {
    let plat = TestPlatform::new(&ram(), range(POOL.0, POOL.1));
    let mut cfg = OutgoingConfig::new(ram(), scratch());
    cfg.max_order = order(MAX_ORDER);
    cfg.bitmap_bytes = bitmap;
    let kho = Kho::new(&plat, cfg).unwrap();
    // One bitmap per block: the stride is one bitmap's span at order 0.
    let stride = bitmap.bits() * PAGE_SIZE;
    for i in 0..STRIDED {
        kho.preserve_folio(pfn_of(GIB + i * stride), Order::ZERO).unwrap();
    }
    for (at, o) in [(512 * MIB, 1), (512 * MIB + 64 * KIB, 3), (512 * MIB + 2 * MIB, 9), (512 * MIB + 4 * MIB, 10)] {
        kho.preserve_folio(pfn_of(at), order(o)).unwrap();
    }
    kho.preserve_pages(pfn_of(512 * MIB + 16 * MIB + 4 * KIB), 1000).unwrap();
    let (a, b) = (blob_dtb("blob-a"), blob_dtb("blob-b"));
    plat.write_phys(PhysAddr::new(BLOB_A), &a).unwrap();
    plat.write_phys(PhysAddr::new(BLOB_B), &b).unwrap();
    kho.add_subtree("blob-a", PhysAddr::new(BLOB_A), a.len() as u64).unwrap();
    kho.add_subtree("blob-b", PhysAddr::new(BLOB_B), 2 * PAGE_SIZE).unwrap();
    let fin = kho.finalize(format).unwrap();
    let want: BTreeSet<Block> = kho.preserved().unwrap().iter().collect();
    let mut fdt_page = vec![0u8; PAGE_SIZE as usize];
    plat.read_phys(fin.ptr.fdt, &mut fdt_page).unwrap();
    Fixture { name, plat, format, bitmap, ptr: fin.ptr, fdt_page, want }
}

impl Fixture {
    fn cfg(&self) -> IncomingConfig {
        let mut cfg = IncomingConfig::new(ram());
        cfg.max_order = order(MAX_ORDER);
        cfg.v1_bitmap_bytes = self.bitmap;
        cfg
    }

    fn u64_at(&self, at: u64) -> u64 {
        self.plat.read_u64(PhysAddr::new(at)).unwrap()
    }

    fn u32_at(&self, at: u64) -> u32 {
        let mut b = [0u8; 4];
        self.plat.read_phys(PhysAddr::new(at), &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn root(&self) -> root::Root {
        root::parse(&self.fdt_page, self.ptr.fdt, &Limits::default()).unwrap()
    }

    fn other_blob(&self, phys: u64) -> u64 {
        if phys == BLOB_A { BLOB_B } else { BLOB_A }
    }

    /// Every site of every structure, walking the real pointers.
    fn sites(&self) -> Vec<Site> {
        let mut out = Vec::new();
        let site = |what: String, loc: Loc, d: &FieldDesc, role: Role, itself, earlier, in_walk| Site {
            what,
            loc,
            width: d.width,
            field: d.field,
            kind: d.kind,
            role,
            itself,
            earlier,
            blob: BLOB_A,
            in_walk,
        };
        for d in KHO_DATA {
            out.push(site(d.name.into(), Loc::Payload(d.offset), d, Role::Plain, None, None, false));
        }
        let array = self.ptr.scratch.as_u64();
        for i in 0..self.ptr.scratch_size / SCRATCH_STRIDE {
            for d in SCRATCH_ENTRY {
                let at = array + i * SCRATCH_STRIDE + d.offset;
                out.push(site(format!("{}[{i}]", d.name), Loc::Phys(at), d, Role::Plain, Some(array), None, false));
            }
        }
        let root = self.root();
        for p in FDT_PROPS.iter().filter(|p| p.formats.contains(&self.format)) {
            let d = fd(p.prop, 0, Width::U64, p.field, p.kind);
            let nodes: Vec<(Option<String>, u64)> = if p.subnode {
                root.subtrees.iter().map(|s| (Some(s.name.clone()), self.other_blob(s.phys.as_u64()))).collect()
            } else {
                vec![(None, BLOB_A)]
            };
            for (node, blob) in nodes {
                let what = format!("/{}{}", node.as_deref().map(|n| format!("{n}/")).unwrap_or_default(), p.prop);
                let in_walk = !p.subnode;
                let mut s = site(
                    what,
                    Loc::Prop { node, prop: p.prop },
                    &d,
                    Role::Plain,
                    Some(self.ptr.fdt.as_u64()),
                    None,
                    in_walk,
                );
                s.blob = blob;
                out.push(s);
            }
        }
        match self.format {
            FormatVersion::V1 => self.v1_sites(root.memory_map.as_u64(), &mut out, site),
            FormatVersion::V4 => self.v4_sites(root.memory_map.as_u64(), &mut out, site),
        }
        out
    }

    fn v1_sites(
        &self,
        first: u64,
        out: &mut Vec<Site>,
        site: impl Fn(String, Loc, &FieldDesc, Role, Option<u64>, Option<u64>, bool) -> Site,
    ) {
        let mut chunk = first;
        let mut c = 0;
        let earlier = |at: u64| if at == first { None } else { Some(first) };
        while chunk != 0 {
            let next = self.u64_at(chunk);
            let num = u64::from(self.u32_at(chunk + offset_of!(abi::ChunkHeader, num_elms) as u64));
            for d in CHUNK_HEADER {
                let role = match d.field {
                    Field::ChunkNext if next == 0 => Role::LastChunkNext,
                    Field::ChunkNumElms if num == v1::CHUNK_CAPACITY as u64 => Role::FullChunkCount,
                    _ => Role::Plain,
                };
                let at = chunk + d.offset;
                out.push(site(
                    format!("chunk{c}.{}", d.name),
                    Loc::Phys(at),
                    d,
                    role,
                    Some(chunk),
                    earlier(chunk),
                    true,
                ));
            }
            for i in 0..num {
                let entry = chunk + CHUNK_ENTRIES_AT + i * CHUNK_ENTRY_STRIDE;
                for d in CHUNK_ENTRY {
                    let what = format!("chunk{c}.{}", d.name.replace("[i]", &format!("[{i}]")));
                    out.push(site(
                        what,
                        Loc::Phys(entry + d.offset),
                        d,
                        Role::Plain,
                        Some(chunk),
                        earlier(chunk),
                        true,
                    ));
                }
                let bm = self.u64_at(entry + offset_of!(abi::BitmapPtr, bitmap) as u64);
                for w in 0..self.bitmap.words() as u64 {
                    if self.u64_at(bm + w * 8) != 0 {
                        let d = &V1_BITMAP_WORD[0];
                        let what = format!("chunk{c}.bitmaps[{i}] word {w}");
                        out.push(site(
                            what,
                            Loc::Phys(bm + w * 8 + d.offset),
                            d,
                            Role::Plain,
                            Some(bm),
                            Some(first),
                            true,
                        ));
                    }
                }
            }
            chunk = next;
            c += 1;
        }
    }

    fn v4_sites(
        &self,
        root: u64,
        out: &mut Vec<Site>,
        site: impl Fn(String, Loc, &FieldDesc, Role, Option<u64>, Option<u64>, bool) -> Site,
    ) {
        let earlier = |at: u64| if at == root { None } else { Some(root) };
        let mut stack = vec![(v4::ROOT_LEVEL, root, String::from("root"))];
        while let Some((level, node, path)) = stack.pop() {
            if level == 0 {
                let d = &RADIX_LEAF_WORD[0];
                for w in 0..v4::LEAF_WORDS as u64 {
                    if self.u64_at(node + w * 8) != 0 {
                        let what = format!("{path} word {w}");
                        out.push(site(what, Loc::Phys(node + w * 8), d, Role::Plain, Some(node), Some(root), true));
                    }
                }
                continue;
            }
            let d = &RADIX_TABLE_ENTRY[0];
            let mut empty_done = false;
            for i in 0..v4::TABLE_ENTRIES as u64 {
                let at = node + i * 8 + d.offset;
                let child = self.u64_at(at);
                let beyond = level == v4::ROOT_LEVEL && i >= 1 << (v4::KEY_WIDTH - v4::level_shift(level));
                let role = if child != 0 {
                    stack.push((level - 1, child, format!("{path}/L{}[{i}]", level - 1)));
                    if level == 1 { Role::TableToLeaf } else { Role::TableToTable }
                } else if beyond && i == v4::TABLE_ENTRIES as u64 - 1 {
                    Role::BeyondKeyWidth
                } else if !beyond && !empty_done {
                    empty_done = true;
                    Role::EmptySlot { leaf: level == 1 }
                } else {
                    continue;
                };
                let what = format!("{path} L{level} table[{i}]");
                out.push(site(what, Loc::Phys(at), d, role, Some(node), earlier(node), true));
            }
        }
    }
}

// ---- hostile values ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Zero,
    Ones,
    PlusOne,
    MinusOne,
    Plus8,
    Plus800,
    IntoScratch,
    IntoFdt,
    OutsideRam,
    AtItself,
    Earlier,
    IntoBlob,
    /// Order 41: past what any structure can hold.
    OrderPastLimit,
    /// Order 11: past this kernel's maximum.
    OrderPastMax,
    /// 256 entries: one past a chunk's capacity.
    PastCapacity,
    /// Property removed.
    Missing,
    /// Property cut to 4 bytes.
    Truncated,
    StrEmpty,
    StrUnknown,
    StrOtherVersion,
    StrList,
}

const ADDR_CLASSES: &[Class] = &[
    Class::Zero,
    Class::Ones,
    Class::PlusOne,
    Class::MinusOne,
    Class::Plus8,
    Class::Plus800,
    Class::IntoScratch,
    Class::IntoFdt,
    Class::OutsideRam,
    Class::AtItself,
    Class::Earlier,
    Class::IntoBlob,
];

fn classes(site: &Site) -> Vec<Class> {
    let mut v: Vec<Class> = match site.kind {
        Kind::Pointer | Kind::Size | Kind::Base => ADDR_CLASSES.to_vec(),
        Kind::Order => {
            vec![Class::Zero, Class::Ones, Class::PlusOne, Class::MinusOne, Class::OrderPastLimit, Class::OrderPastMax]
        }
        Kind::Count => vec![Class::Zero, Class::Ones, Class::PlusOne, Class::MinusOne, Class::PastCapacity],
        Kind::Bits => vec![Class::Zero, Class::Ones, Class::PlusOne, Class::MinusOne],
        Kind::Str => vec![Class::StrEmpty, Class::StrUnknown, Class::StrOtherVersion, Class::StrList],
    };
    if matches!(site.loc, Loc::Prop { .. }) {
        v.extend([Class::Missing, Class::Truncated]);
    }
    v
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Int(u64),
    /// New property bytes (None removes it).
    Prop(Option<Vec<u8>>),
}

/// The hostile value of `class` for `site` whose current value is `orig` (None when the
/// class does not apply to the site).
fn hostile(fx: &Fixture, site: &Site, class: Class, orig: u64) -> Option<Value> {
    let mask = if site.width == Width::U32 { u64::from(u32::MAX) } else { u64::MAX };
    let int = |v: u64| Some(Value::Int(v & mask));
    match class {
        Class::Zero => int(0),
        Class::Ones => int(u64::MAX),
        Class::PlusOne => int(orig.wrapping_add(1)),
        Class::MinusOne => int(orig.wrapping_sub(1)),
        Class::Plus8 => int(orig.wrapping_add(8)),
        Class::Plus800 => int(orig.wrapping_add(0x800)),
        Class::IntoScratch => int(SCRATCH[0].0),
        Class::IntoFdt => int(fx.ptr.fdt.as_u64()),
        Class::OutsideRam => int(OUTSIDE_RAM),
        Class::AtItself => site.itself.and_then(int),
        Class::Earlier => site.earlier.and_then(int),
        Class::IntoBlob => int(site.blob),
        Class::OrderPastLimit => int(u64::from(kho_core::types::ORDER_LIMIT) + 1),
        Class::OrderPastMax => int(u64::from(MAX_ORDER) + 1),
        Class::PastCapacity => int(v1::CHUNK_CAPACITY as u64 + 1),
        Class::Missing => Some(Value::Prop(None)),
        Class::Truncated => Some(Value::Prop(Some(orig.to_le_bytes()[..4].to_vec()))),
        Class::StrEmpty => Some(Value::Prop(Some(b"\0".to_vec()))),
        Class::StrUnknown => Some(Value::Prop(Some(b"kho-v2\0".to_vec()))),
        Class::StrOtherVersion => {
            let other = if fx.format == FormatVersion::V1 { FormatVersion::V4 } else { FormatVersion::V1 };
            Some(Value::Prop(Some(format!("{}\0", other.compatible()).into_bytes())))
        }
        Class::StrList => Some(Value::Prop(Some(format!("kho-v9\0{}\0", fx.format.compatible()).into_bytes()))),
    }
}

// ---- outcomes and the expectation table ----------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum V {
    Harmless,
    Null,
    Misaligned,
    OutsideRam,
    InScratch,
    Overlap,
    Duplicate,
    OrderTooLarge,
    BadValue,
    Cycle,
    TooMany,
    Unreadable,
    BadFdt,
    Incompatible,
    MissingProperty,
    PropertyLength,
    BlobNotPreserved,
    Other,
}

type Outcome = (V, Option<Field>);

fn prop_field(prop: &str) -> Option<Field> {
    match prop {
        "preserved-memory-map" => Some(Field::PreservedMemoryMap),
        "fdt" | "preserved-data" => Some(Field::SubtreeData),
        "blob-size" => Some(Field::SubtreeSize),
        "compatible" => Some(Field::Compatible),
        _ => None,
    }
}

fn outcome(e: &DecodeError) -> Outcome {
    use DecodeErrorKind as K;
    let what = Some(e.field);
    match &e.kind {
        K::Null => (V::Null, what),
        K::Misaligned { .. } => (V::Misaligned, what),
        K::OutsideRam { .. } => (V::OutsideRam, what),
        K::InScratch { .. } => (V::InScratch, what),
        K::Overlap { .. } => (V::Overlap, what),
        K::Duplicate { .. } => (V::Duplicate, what),
        K::OrderTooLarge { .. } => (V::OrderTooLarge, what),
        K::BadValue { .. } => (V::BadValue, what),
        K::Cycle { .. } => (V::Cycle, what),
        K::TooMany { .. } => (V::TooMany, what),
        K::Unreadable(_) => (V::Unreadable, what),
        K::BadFdt { .. } => (V::BadFdt, what),
        K::Incompatible { .. } => (V::Incompatible, Some(Field::Compatible)),
        K::MissingProperty { prop, .. } => (V::MissingProperty, prop_field(prop)),
        K::PropertyLength { prop, .. } => (V::PropertyLength, prop_field(prop)),
        K::BlobNotPreserved { .. } => (V::BlobNotPreserved, Some(Field::SubtreeData)),
        _ => (V::Other, None),
    }
}

const fn e(v: V, f: Field) -> Outcome {
    (v, Some(f))
}
const HARMLESS: Outcome = (V::Harmless, None);
const BLOB_LOST: Outcome = e(V::BlobNotPreserved, Field::SubtreeData);

/// Part of the map vanished: still a valid handover unless a sub-blob's pages went with it.
const DROPPED: &[Outcome] = &[HARMLESS, BLOB_LOST];
/// Blocks were moved or invented: the block-level checks decide.
const RELOCATED: &[Outcome] = &[
    HARMLESS,
    BLOB_LOST,
    e(V::OutsideRam, Field::Block),
    e(V::InScratch, Field::Block),
    e(V::Overlap, Field::Block),
    e(V::Duplicate, Field::Block),
    e(V::Overlap, Field::PreservedMemoryMap),
    e(V::BadValue, Field::Block),
];
/// A kho-v1 bitmap pointer moved: as [`RELOCATED`], or onto another entry's bitmap, which is
/// refused as a shared bitmap (one bitmap behind many entries would describe unbounded memory).
const RELOCATED_BITMAP: &[Outcome] = &[
    HARMLESS,
    BLOB_LOST,
    e(V::OutsideRam, Field::Block),
    e(V::InScratch, Field::Block),
    e(V::Overlap, Field::Block),
    e(V::Duplicate, Field::Block),
    e(V::Overlap, Field::PreservedMemoryMap),
    e(V::BadValue, Field::Block),
    e(V::BadValue, Field::ChunkBitmap),
];
/// A leaf's words were replaced by a page that is not a leaf.
const BAD_LEAF: &[Outcome] = &[
    HARMLESS,
    BLOB_LOST,
    e(V::OutsideRam, Field::Block),
    e(V::InScratch, Field::Block),
    e(V::Overlap, Field::Block),
    e(V::Duplicate, Field::Block),
    e(V::Overlap, Field::PreservedMemoryMap),
    e(V::BadValue, Field::RadixKey),
];

/// The expectation table: what parse must say for each (field, value class). `fx` and the
/// site's role select between the few rows that depend on the format or on the instance.
fn expected(fx: &Fixture, site: &Site, class: Class) -> Vec<Outcome> {
    use Class as C;
    use Field as F;
    let v1 = fx.format == FormatVersion::V1;
    let one = |o: Outcome| vec![o];
    let set = |s: &[Outcome]| s.to_vec();
    let with = |o: Outcome, s: &[Outcome]| {
        let mut v = vec![o];
        v.extend_from_slice(s);
        v
    };
    match (site.field, site.kind, class) {
        // ---- handover pointer: the FDT ----
        (F::RootFdt, Kind::Pointer, C::Zero) => one(e(V::Null, F::RootFdt)),
        (F::RootFdt, Kind::Pointer, C::Ones) => one(e(V::BadValue, F::RootFdt)),
        (F::RootFdt, Kind::Pointer, C::OutsideRam) => one(e(V::OutsideRam, F::RootFdt)),
        (F::RootFdt, Kind::Pointer, C::IntoBlob) => one(e(V::Incompatible, F::Compatible)),
        (F::RootFdt, Kind::Pointer, _) => one(e(V::BadFdt, F::RootFdt)),
        // A size between the header and the 64 MiB blob limit that stays in RAM is harmless.
        (F::RootFdt, Kind::Size, C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800) => one(HARMLESS),
        (F::RootFdt, Kind::Size, _) => one(e(V::BadValue, F::RootFdt)),
        // ---- handover pointer: the scratch array ----
        (F::ScratchArray, Kind::Pointer, C::Zero) => one(e(V::Null, F::ScratchArray)),
        // The array pointer is checked like every other pointer: 8-byte aligned, in RAM.
        // All ones is above the 52-bit physical limit, checked with the pointer itself.
        (F::ScratchArray, Kind::Pointer, C::Ones) => one(e(V::BadValue, F::ScratchArray)),
        (F::ScratchArray, Kind::Pointer, C::PlusOne | C::MinusOne) => one(e(V::Misaligned, F::ScratchArray)),
        (F::ScratchArray, Kind::Pointer, C::OutsideRam) => one(e(V::OutsideRam, F::ScratchArray)),
        // A zero page: the first entry is an empty area.
        (F::ScratchArray, Kind::Pointer, C::IntoScratch) => one(e(V::BadValue, F::ScratchEntry)),
        // Other aligned bytes read as entries: misaligned, empty or outside RAM.
        (F::ScratchArray, Kind::Pointer, _) => {
            vec![e(V::Misaligned, F::ScratchEntry), e(V::BadValue, F::ScratchEntry), e(V::OutsideRam, F::ScratchEntry)]
        }
        // 0x820 bytes: a multiple of 16, so the zero entries after the real ones are read.
        (F::ScratchArray, Kind::Size, C::Plus800) => one(e(V::BadValue, F::ScratchEntry)),
        (F::ScratchArray, Kind::Size, _) => one(e(V::BadValue, F::ScratchArray)),
        // ---- scratch entries ----
        (F::ScratchEntry, Kind::Pointer, C::Zero | C::OutsideRam) => one(e(V::OutsideRam, F::ScratchEntry)),
        (F::ScratchEntry, Kind::Pointer, C::Ones | C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800) => {
            one(e(V::Misaligned, F::ScratchEntry))
        }
        (F::ScratchEntry, Kind::Pointer, C::IntoScratch) => one(e(V::InScratch, F::ScratchEntry)),
        // The area now covers the metadata (or the blob): the first pointer into it is named.
        (F::ScratchEntry, Kind::Pointer, C::IntoFdt | C::Earlier) => one(e(V::InScratch, F::PreservedMemoryMap)),
        (F::ScratchEntry, Kind::Pointer, C::IntoBlob) => one(e(V::InScratch, F::Block)),
        // Only the scratch array itself (the last metadata page) and free pool pages follow it.
        (F::ScratchEntry, Kind::Pointer, C::AtItself) => one(HARMLESS),
        (F::ScratchEntry, Kind::Size, C::Zero) => one(e(V::BadValue, F::ScratchEntry)),
        (F::ScratchEntry, Kind::Size, C::Ones | C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800) => {
            one(e(V::Misaligned, F::ScratchEntry))
        }
        (F::ScratchEntry, Kind::Size, C::OutsideRam) => one(e(V::OutsideRam, F::ScratchEntry)),
        // A bigger area: harmless unless it now covers preserved blocks.
        (F::ScratchEntry, Kind::Size, _) => vec![HARMLESS, e(V::InScratch, F::Block)],
        // ---- root FDT ----
        (F::Compatible, _, C::StrEmpty | C::StrUnknown | C::Missing | C::Truncated) => {
            one(e(V::Incompatible, F::Compatible))
        }
        (F::Compatible, _, C::StrList) => one(HARMLESS),
        // The sub-nodes carry the other format's property names (`fdt` vs `preserved-data`);
        // `wrong_format_decoder_refuses_the_other_map` covers a handover without sub-nodes.
        (F::Compatible, _, C::StrOtherVersion) => one(e(V::MissingProperty, F::SubtreeData)),
        (F::PreservedMemoryMap, _, C::Missing) => one(e(V::MissingProperty, F::PreservedMemoryMap)),
        (F::PreservedMemoryMap, _, C::Truncated) => one(e(V::PropertyLength, F::PreservedMemoryMap)),
        // kho-v1: NULL is an empty map, but then the blobs are not preserved.
        (F::PreservedMemoryMap, _, C::Zero) if v1 => one(BLOB_LOST),
        (F::PreservedMemoryMap, _, C::Zero) => one(e(V::Null, F::PreservedMemoryMap)),
        (F::PreservedMemoryMap, _, C::Ones | C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800) => {
            one(e(V::Misaligned, F::PreservedMemoryMap))
        }
        (F::PreservedMemoryMap, _, C::IntoScratch) => one(e(V::InScratch, F::PreservedMemoryMap)),
        (F::PreservedMemoryMap, _, C::OutsideRam) => one(e(V::OutsideRam, F::PreservedMemoryMap)),
        // An FDT read as a chunk has order 0x38000000 (off_dt_struct); as a radix root its
        // first entry is the magic, not page aligned.
        (F::PreservedMemoryMap, _, C::IntoFdt | C::IntoBlob) if v1 => one(e(V::OrderTooLarge, F::ChunkOrder)),
        (F::PreservedMemoryMap, _, C::IntoFdt | C::IntoBlob) => one(e(V::Misaligned, F::RadixEntry)),
        // ---- sub-nodes ----
        (F::SubtreeData, _, C::Missing) => one(e(V::MissingProperty, F::SubtreeData)),
        (F::SubtreeData, _, C::Truncated) => one(e(V::PropertyLength, F::SubtreeData)),
        (F::SubtreeData, _, C::Zero) => one(e(V::Null, F::SubtreeData)),
        (F::SubtreeData, _, C::Ones) => one(e(V::BadValue, F::SubtreeData)),
        (F::SubtreeData, _, C::IntoScratch) => one(e(V::InScratch, F::SubtreeData)),
        (F::SubtreeData, _, C::OutsideRam) => one(e(V::OutsideRam, F::SubtreeData)),
        // kho-v1 reads the blob's FDT header for its size.
        (F::SubtreeData, _, C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800 | C::Earlier) if v1 => {
            one(e(V::BadFdt, F::Blob))
        }
        // Another FDT inside preserved memory: a valid (if useless) handover.
        (F::SubtreeData, _, C::IntoFdt | C::IntoBlob) if v1 => one(HARMLESS),
        // kho-v4 only needs the bytes to be preserved: the page before a blob is not.
        (F::SubtreeData, _, C::MinusOne | C::Earlier) => one(BLOB_LOST),
        (F::SubtreeData, _, _) => set(DROPPED),
        (F::SubtreeSize, _, C::Missing) => one(e(V::MissingProperty, F::SubtreeSize)),
        (F::SubtreeSize, _, C::Truncated) => one(e(V::PropertyLength, F::SubtreeSize)),
        (F::SubtreeSize, _, C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800) => set(DROPPED),
        // Zero, or above the 64 MiB blob limit (every address class here is).
        (F::SubtreeSize, _, _) => one(e(V::BadValue, F::SubtreeSize)),
        // ---- kho-v1 chunks ----
        (F::ChunkNext, _, C::Zero) => set(DROPPED),
        (F::ChunkNext, _, C::Ones | C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800) => {
            one(e(V::Misaligned, F::ChunkNext))
        }
        (F::ChunkNext, _, C::IntoScratch) => one(e(V::InScratch, F::ChunkNext)),
        (F::ChunkNext, _, C::OutsideRam) => one(e(V::OutsideRam, F::ChunkNext)),
        (F::ChunkNext, _, C::AtItself | C::Earlier) => one(e(V::Cycle, F::ChunkNext)),
        (F::ChunkNext, _, C::IntoFdt | C::IntoBlob) => one(e(V::OrderTooLarge, F::ChunkOrder)),
        (F::ChunkOrder, _, C::Ones | C::OrderPastLimit) => one(e(V::OrderTooLarge, F::ChunkOrder)),
        // 0 - 1 wraps to u32::MAX for an order-0 chunk; otherwise blocks shrink in place.
        (F::ChunkOrder, _, C::MinusOne) => with(e(V::OrderTooLarge, F::ChunkOrder), RELOCATED),
        (F::ChunkOrder, _, C::Zero) => set(RELOCATED),
        // A larger order needs a larger phys_start alignment.
        (F::ChunkOrder, _, _) => with(e(V::Misaligned, F::ChunkPhysStart), RELOCATED),
        (F::ChunkNumElms, _, C::Zero | C::MinusOne) => set(DROPPED),
        (F::ChunkNumElms, _, C::PlusOne) if site.role == Role::FullChunkCount => one(e(V::BadValue, F::ChunkNumElms)),
        // The entry after the last is zeroed: its bitmap pointer is NULL.
        (F::ChunkNumElms, _, C::PlusOne) => one(e(V::Null, F::ChunkBitmap)),
        (F::ChunkNumElms, _, _) => one(e(V::BadValue, F::ChunkNumElms)),
        (F::ChunkPhysStart, _, C::Ones | C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800) => {
            one(e(V::Misaligned, F::ChunkPhysStart))
        }
        // Any other aligned base moves the bitmap's blocks; a misaligned one is refused.
        (F::ChunkPhysStart, _, _) => with(e(V::Misaligned, F::ChunkPhysStart), RELOCATED),
        (F::ChunkBitmap, _, C::Zero) => one(e(V::Null, F::ChunkBitmap)),
        (F::ChunkBitmap, _, C::Ones | C::PlusOne | C::MinusOne | C::Plus8) => one(e(V::Misaligned, F::ChunkBitmap)),
        // 0x800 keeps a 512-byte bitmap aligned: another bitmap slot is read.
        (F::ChunkBitmap, _, C::Plus800) if fx.bitmap == BitmapBytes::B512 => set(RELOCATED_BITMAP),
        (F::ChunkBitmap, _, C::Plus800) => one(e(V::Misaligned, F::ChunkBitmap)),
        (F::ChunkBitmap, _, C::IntoScratch) => one(e(V::InScratch, F::ChunkBitmap)),
        (F::ChunkBitmap, _, C::OutsideRam) => one(e(V::OutsideRam, F::ChunkBitmap)),
        (F::ChunkBitmap, _, _) => set(RELOCATED_BITMAP),
        (F::Block, Kind::Bits, C::Zero) => set(DROPPED),
        (F::Block, Kind::Bits, _) => set(RELOCATED),
        // ---- kho-v4 radix tree ----
        (F::RadixEntry, _, _) if site.role == Role::BeyondKeyWidth => one(e(V::BadValue, F::RadixEntry)),
        (F::RadixEntry, _, C::Zero) => set(DROPPED),
        (F::RadixEntry, _, C::Ones | C::PlusOne | C::MinusOne | C::Plus8 | C::Plus800) => {
            one(e(V::Misaligned, F::RadixEntry))
        }
        (F::RadixEntry, _, C::IntoScratch) => one(e(V::InScratch, F::RadixEntry)),
        (F::RadixEntry, _, C::OutsideRam) => one(e(V::OutsideRam, F::RadixEntry)),
        (F::RadixEntry, _, C::AtItself | C::Earlier) => one(e(V::Cycle, F::RadixEntry)),
        // An FDT as a table: its first entry is the magic, not page aligned. As a leaf: keys.
        (F::RadixEntry, _, C::IntoFdt | C::IntoBlob) => match site.role {
            Role::TableToLeaf | Role::EmptySlot { leaf: true } => set(BAD_LEAF),
            _ => one(e(V::Misaligned, F::RadixEntry)),
        },
        (F::RadixEntry, _, _) => vec![],
        (F::RadixKey, Kind::Bits, C::Zero) => set(DROPPED),
        (F::RadixKey, Kind::Bits, _) => set(BAD_LEAF),
        _ => vec![],
    }
}

// ---- running one case ----------------------------------------------------------------------

fn read_site(fx: &Fixture, site: &Site) -> u64 {
    match &site.loc {
        Loc::Payload(off) => {
            let p = fx.ptr.to_setup_data_payload();
            u64::from_le_bytes(p[*off as usize..*off as usize + 8].try_into().unwrap())
        }
        Loc::Phys(at) => match site.width {
            Width::U32 => u64::from(fx.u32_at(*at)),
            Width::U64 => fx.u64_at(*at),
        },
        Loc::Prop { node, prop } => {
            let tree = FdtTree::parse(&fx.fdt_page, Field::RootFdt, fx.ptr.fdt).unwrap();
            let n = match node {
                Some(name) => tree.root.find_child(name).unwrap().clone(),
                None => tree.root,
            };
            let v = n.get(prop).unwrap();
            if v.len() == 8 { u64::from_le_bytes(v.try_into().unwrap()) } else { 0 }
        }
    }
}

/// Writes the mutation and returns the handover pointer to parse with.
fn apply(fx: &Fixture, site: &Site, value: &Value) -> HandoverPtr {
    match (&site.loc, value) {
        (Loc::Payload(off), Value::Int(v)) => {
            let mut p = fx.ptr.to_setup_data_payload();
            p[*off as usize..*off as usize + 8].copy_from_slice(&v.to_le_bytes());
            HandoverPtr::from_setup_data_payload(&p, PhysAddr::new(0)).unwrap()
        }
        (Loc::Phys(at), Value::Int(v)) => {
            let bytes = v.to_le_bytes();
            let n = if site.width == Width::U32 { 4 } else { 8 };
            fx.plat.write_phys(PhysAddr::new(*at), &bytes[..n]).unwrap();
            fx.ptr
        }
        (Loc::Prop { node, prop }, v) => {
            let new: Option<Vec<u8>> = match v {
                Value::Int(i) => Some(i.to_le_bytes().to_vec()),
                Value::Prop(p) => p.clone(),
            };
            let mut tree = FdtTree::parse(&fx.fdt_page, Field::RootFdt, fx.ptr.fdt).unwrap();
            let n: &mut FdtNode = match node {
                Some(name) => tree.root.children.iter_mut().find(|c| &c.name == name).unwrap(),
                None => &mut tree.root,
            };
            let i = n.props.iter().position(|(k, _)| k == prop).unwrap();
            match new {
                Some(bytes) => n.props[i].1 = bytes,
                None => {
                    n.props.remove(i);
                }
            }
            let dtb = tree.to_dtb().unwrap();
            let mut page = vec![0u8; PAGE_SIZE as usize];
            page[..dtb.len()].copy_from_slice(&dtb);
            fx.plat.write_phys(fx.ptr.fdt, &page).unwrap();
            fx.ptr
        }
        (_, Value::Prop(_)) => unreachable!("property values only go to properties"),
    }
}

fn restore(fx: &Fixture, site: &Site, orig: u64) {
    match &site.loc {
        Loc::Payload(_) => {}
        Loc::Phys(at) => {
            let n = if site.width == Width::U32 { 4 } else { 8 };
            fx.plat.write_phys(PhysAddr::new(*at), &orig.to_le_bytes()[..n]).unwrap();
        }
        Loc::Prop { .. } => fx.plat.write_phys(fx.ptr.fdt, &fx.fdt_page).unwrap(),
    }
}

/// Metadata pages the memory-map walk visits with the current bytes (None if the root FDT
/// no longer parses, so there is no walk).
fn walk_pages(fx: &Fixture) -> Option<usize> {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    fx.plat.read_phys(fx.ptr.fdt, &mut page).unwrap();
    let root = root::parse(&page, fx.ptr.fdt, &Limits::default()).ok()?;
    let (ram, scratch) = (ram(), scratch());
    let mut ctx = WalkContext::new(&fx.plat, &ram, &scratch, Limits::default());
    let mut out = BlockSet::new();
    let _ = match root.version {
        FormatVersion::V1 => v1::decode(&mut ctx, root.memory_map, fx.ptr.fdt, fx.bitmap, &mut out),
        FormatVersion::V4 => v4::decode(&mut ctx, root.memory_map, fx.ptr.fdt, &mut out),
    };
    Some(ctx.metadata_pages.len())
}

/// A parsed handover is only acceptable if every reserved byte is RAM outside scratch.
fn check_harmless(fx: &Fixture, h: &Handover) -> Result<(), String> {
    let ram = ram();
    let mut map = RecordingMap { ram: ram.clone(), ..RecordingMap::default() };
    h.reserve(&mut map);
    for r in map.reserved.iter().flatten() {
        if !ram.iter().any(|m| m.contains_range(*r)) {
            return Err(format!("reserved {r:?} outside RAM"));
        }
        if let Some(s) = scratch().iter().chain(h.scratch()).find(|s| s.overlaps(*r)) {
            return Err(format!("reserved {r:?} overlaps scratch {s:?}"));
        }
    }
    if h.preserved().is_empty() && !fx.want.is_empty() && h.subtrees().len() == 2 {
        return Err("an empty map cannot preserve the blobs".into());
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    cases: usize,
    sites: usize,
    field_rows: BTreeSet<String>,
    by_outcome: BTreeMap<String, usize>,
    failures: Vec<String>,
    max_extra_pages: i64,
}

fn run_fixture(fx: &Fixture, t: &mut Tally) {
    let cfg = fx.cfg();
    let clean = Handover::parse(&fx.plat, &fx.ptr, &cfg).unwrap();
    assert_eq!(clean.preserved().iter().collect::<BTreeSet<_>>(), fx.want, "{}: clean handover", fx.name);
    let baseline = walk_pages(fx).unwrap();
    // The page budget is exact: the clean walk fits it and not one page less.
    let mut tight = cfg.clone();
    tight.limits.max_metadata_pages = baseline as u64;
    assert!(Handover::parse(&fx.plat, &fx.ptr, &tight).is_ok(), "{}: exact budget", fx.name);
    tight.limits.max_metadata_pages = baseline as u64 - 1;
    let e = Handover::parse(&fx.plat, &fx.ptr, &tight).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::TooMany { limit } if limit == baseline as u64 - 1), "{}: {e}", fx.name);

    let sites = fx.sites();
    t.sites += sites.len();
    for site in &sites {
        t.field_rows.insert(format!("{:?}/{:?}", site.field, site.kind));
        let orig = read_site(fx, site);
        let mut seen = BTreeSet::new();
        for class in classes(site) {
            let Some(value) = hostile(fx, site, class, orig) else { continue };
            // Skip no-ops and values another class of this site already tried.
            if value == Value::Int(orig) || !seen.insert(format!("{value:?}")) {
                continue;
            }
            let ptr = apply(fx, site, &value);
            let result = catch_unwind(AssertUnwindSafe(|| Handover::parse(&fx.plat, &ptr, &cfg)));
            let pages = if site.in_walk { walk_pages(fx) } else { None };
            restore(fx, site, orig);
            t.cases += 1;
            let tag = format!("{} {} = {:?} ({class:?})", fx.name, site.what, value);
            let got = match result {
                Err(_) => {
                    t.failures.push(format!("{tag}: PANIC"));
                    continue;
                }
                Ok(Ok(h)) => match check_harmless(fx, &h) {
                    Ok(()) => HARMLESS,
                    Err(why) => {
                        t.failures.push(format!("{tag}: accepted but {why}"));
                        continue;
                    }
                },
                Ok(Err(err)) => outcome(&err),
            };
            if let Some(p) = pages {
                let extra = p as i64 - baseline as i64;
                t.max_extra_pages = t.max_extra_pages.max(extra);
                if extra > 2 {
                    t.failures.push(format!("{tag}: walk visited {p} pages, clean walk {baseline}"));
                }
            }
            *t.by_outcome.entry(format!("{:?} {:?}", got.0, got.1)).or_default() += 1;
            let want = expected(fx, site, class);
            if !want.contains(&got) {
                t.failures.push(format!("{tag}: got {got:?}, expected one of {want:?}"));
            }
        }
    }
}

fn matrix(name: &'static str, format: FormatVersion, bitmap: BitmapBytes, floor: usize) {
    let fx = build(name, format, bitmap);
    let mut t = Tally::default();
    run_fixture(&fx, &mut t);
    println!(
        "corruption matrix {name}: {} cases over {} sites ({} field rows); worst walk +{} pages",
        t.cases,
        t.sites,
        t.field_rows.len(),
        t.max_extra_pages
    );
    for (o, n) in &t.by_outcome {
        println!("  {n:6}  {o}");
    }
    for f in t.failures.iter().take(60) {
        println!("FAIL {f}");
    }
    assert!(t.failures.is_empty(), "{} of {} cases failed (first: {})", t.failures.len(), t.cases, t.failures[0]);
    assert!(t.cases >= floor, "{name}: only {} cases", t.cases);
    assert!(t.max_extra_pages <= 2);
}

// One test per format so the harness runs them in parallel.

#[test]
fn matrix_kho_v1_512_byte_bitmaps() {
    matrix("kho-v1/512", FormatVersion::V1, BitmapBytes::B512, V1_CASE_FLOOR);
}

#[test]
fn matrix_kho_v1_4096_byte_bitmaps() {
    matrix("kho-v1/4096", FormatVersion::V1, BitmapBytes::B4096, V1_CASE_FLOOR);
}

#[test]
fn matrix_kho_v4() {
    matrix("kho-v4", FormatVersion::V4, BitmapBytes::B512, V4_CASE_FLOOR);
}

/// The kho-v1 list of the fixtures really has several chunks, one order spanning two.
#[test]
fn fixtures_have_multi_chunk_lists() {
    for bitmap in [BitmapBytes::B512, BitmapBytes::B4096] {
        let fx = build("v1", FormatVersion::V1, bitmap);
        let mut chunk = fx.root().memory_map.as_u64();
        let mut orders = Vec::new();
        while chunk != 0 {
            orders.push((
                fx.u32_at(chunk + offset_of!(abi::ChunkHeader, order) as u64),
                fx.u32_at(chunk + offset_of!(abi::ChunkHeader, num_elms) as u64),
            ));
            chunk = fx.u64_at(chunk);
        }
        assert_eq!(orders[..2], [(0, 255), (0, 263 - 255)], "{bitmap:?}: {orders:?}");
        assert!(orders.len() >= 6, "{orders:?}");
    }
}

/// A small handover (no sub-nodes, so the root FDT parses as either version) for the
/// targeted tests below.
fn small(format: FormatVersion) -> (TestPlatform, HandoverPtr) {
    let plat = TestPlatform::new(&ram(), range(POOL.0, POOL.1));
    let mut cfg = OutgoingConfig::new(ram(), scratch());
    cfg.max_order = order(MAX_ORDER);
    let kho = Kho::new(&plat, cfg).unwrap();
    kho.preserve_folio(pfn_of(GIB), Order::ZERO).unwrap();
    kho.preserve_folio(pfn_of(GIB + 4 * MIB), order(10)).unwrap();
    let fin = kho.finalize(format).unwrap();
    (plat, fin.ptr)
}

fn set_root_prop(plat: &TestPlatform, ptr: &HandoverPtr, prop: &str, value: &[u8]) {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    plat.read_phys(ptr.fdt, &mut page).unwrap();
    let mut tree = FdtTree::parse(&page, Field::RootFdt, ptr.fdt).unwrap();
    let i = tree.root.props.iter().position(|(k, _)| k == prop).unwrap();
    tree.root.props[i].1 = value.to_vec();
    let dtb = tree.to_dtb().unwrap();
    page.fill(0);
    page[..dtb.len()].copy_from_slice(&dtb);
    plat.write_phys(ptr.fdt, &page).unwrap();
}

/// With no sub-nodes to give it away, a handover relabelled as the other version reaches the
/// other decoder, which must refuse the foreign map by its first structural check.
#[test]
fn wrong_format_decoder_refuses_the_other_map() {
    let cfg = IncomingConfig::new(ram());
    // kho-v1 read as kho-v4: the first chunk (order 0) is the "root"; its entry 0 (`next`)
    // leads to the second chunk (order 10) as a level-4 table, whose entry 1 is
    // `order | num_elms << 32` = 10 | 1 << 32: not page aligned.
    let (plat, ptr) = small(FormatVersion::V1);
    let first = Handover::parse(&plat, &ptr, &cfg).unwrap().memory_map();
    let second = plat.read_u64(first).unwrap();
    set_root_prop(&plat, &ptr, "compatible", b"kho-v4\0");
    let e = Handover::parse(&plat, &ptr, &cfg).unwrap_err();
    assert_eq!(
        e,
        DecodeError::new(
            Field::RadixEntry,
            PhysAddr::new(second + 8),
            DecodeErrorKind::Misaligned { value: 10 | 1 << 32, align: PAGE_SIZE }
        )
    );
    // kho-v4 read as kho-v1: the radix root is the first "chunk"; its order and num_elms are
    // the halves of table entry 1 (the empty order-1 path), so it holds no entries, and its
    // `next` is entry 0, the level-4 node of orders 2 and up. Read as a chunk, that node's
    // order field is the low half of its entry 1: the address of the order-10 level-3 node.
    let (plat, ptr) = small(FormatVersion::V4);
    let root = Handover::parse(&plat, &ptr, &cfg).unwrap().memory_map().as_u64();
    let l4 = plat.read_u64(PhysAddr::new(root)).unwrap();
    let l3 = plat.read_u64(PhysAddr::new(l4 + 8)).unwrap();
    set_root_prop(&plat, &ptr, "compatible", b"kho-v1\0");
    let e = Handover::parse(&plat, &ptr, &cfg).unwrap_err();
    assert_eq!(
        e,
        DecodeError::new(
            Field::ChunkOrder,
            PhysAddr::new(l4 + 8),
            DecodeErrorKind::OrderTooLarge { order: l3, max: 40 }
        )
    );
}

/// Every other pointer in the handover goes through `WalkContext::check_pointer` (NULL,
/// alignment, RAM, scratch), and so does the scratch array's. (It used to get only a NULL check:
/// one byte off, the shifted bytes decoded as different scratch areas and were accepted.)
#[test]
fn scratch_array_pointer_is_checked_like_other_pointers() {
    let (plat, ptr) = small(FormatVersion::V4);
    let cfg = IncomingConfig::new(ram());
    let shifted = HandoverPtr { scratch: PhysAddr::new(ptr.scratch.as_u64() + 1), ..ptr };
    let e = Handover::parse(&plat, &shifted, &cfg).unwrap_err();
    assert_eq!(
        e,
        DecodeError::new(
            Field::ScratchArray,
            shifted.scratch,
            DecodeErrorKind::Misaligned { value: shifted.scratch.as_u64(), align: 8 }
        )
    );
    let outside = HandoverPtr { scratch: PhysAddr::new(OUTSIDE_RAM), ..ptr };
    let e = Handover::parse(&plat, &outside, &cfg).unwrap_err();
    assert!(
        matches!(e, DecodeError { field: Field::ScratchArray, kind: DecodeErrorKind::OutsideRam { .. }, .. }),
        "{e}"
    );
}

/// libfdt's stringlist match (what Linux uses) needs the NUL: a `compatible` of the six bytes
/// "kho-v4" without one does not match "kho-v4", and Linux boots cold. (It used to match.)
#[test]
fn compatible_without_nul_is_incompatible() {
    let (plat, ptr) = small(FormatVersion::V4);
    set_root_prop(&plat, &ptr, "compatible", b"kho-v4");
    let e = Handover::parse(&plat, &ptr, &IncomingConfig::new(ram())).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::Incompatible { .. }), "{e}");
}

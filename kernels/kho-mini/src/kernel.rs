//! Bare-metal part: assembly entry, serial console, heap, identity-mapped memory, jump.

use alloc::vec;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::arch::{asm, global_asm};
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use kho_core::{Access, MemError, PhysAddr, PhysRange, PhysRead, PhysWrite};
use kho_mini::flow::{self, Probe};
use kho_mini::memory::{bump, check_access, intersect};
use kho_mini::pvh;

/// Everything below this is identity-mapped by the entry code (64 GiB, 2 MiB pages).
const MAP_LIMIT: u64 = 64 << 30;
/// Largest heap taken from scratch.
const HEAP_MAX: u64 = 64 << 20;
/// `kind` passed by the entry code: 0 = boot_params in `rsi`, 1 = PVH start info in `ebx`.
const KIND_PVH: u64 = 1;

// The 32-bit PVH entry, in AT&T syntax (LLVM's Intel parser refuses two symbols in a
// displacement): every address is the load address 0x100000 plus a same-section offset,
// so the code needs no relocation.
global_asm!(
    r#"
    .section .head, "awx"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %edi
    movl $0x100000, %ebp
    leal (pvh_stack_top - pvh_start32)(%ebp), %esp
    leal (pvh_pdpt - pvh_start32)(%ebp), %eax
    orl $3, %eax
    movl %eax, (pvh_pml4 - pvh_start32)(%ebp)
    leal (pvh_pd - pvh_start32)(%ebp), %eax
    orl $3, %eax
    movl %eax, (pvh_pdpt - pvh_start32)(%ebp)
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, (pvh_pd - pvh_start32)(%ebp, %ecx, 8)
    incl %ecx
    cmpl $512, %ecx
    jb 1b
    leal (gdt - pvh_start32)(%ebp), %eax
    movl %eax, (pvh_gdt_ptr - pvh_start32 + 2)(%ebp)
    lgdt (pvh_gdt_ptr - pvh_start32)(%ebp)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    leal (pvh_pml4 - pvh_start32)(%ebp), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    leal (pvh_long - pvh_start32)(%ebp), %eax
    pushl $0x10
    pushl %eax
    lret
"#,
    options(att_syntax)
);

// The 64-bit entry and the common path, the tables, the note and the exception stubs.
global_asm!(
    r#"
    .section .head, "awx"
    .code64
pvh_long:
    mov eax, edi
    mov r15, rax
    mov r14d, 1
    jmp common64

    .balign 8
pvh_gdt_ptr:
    .word gdt_end - gdt - 1
    .long 0
    .balign 8
gdt:
    .quad 0
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
gdt_end:

    .org 0x200
    .global _start
_start:
    cli
    cld
    mov r15, rsi
    xor r14d, r14d
common64:
    lea rsp, [rip + kmini_stack_top]
    lea rax, [rip + gdt]
    mov [rip + kmini_gdt_ptr + 2], rax
    lgdt [rip + kmini_gdt_ptr]
    mov ax, 0x18
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rax, [rip + 2f]
    push 0x10
    push rax
    retfq
2:
    lea rbx, [rip + __image_start]
    lea rcx, [rip + __rela_start]
    lea rdx, [rip + __rela_end]
3:
    cmp rcx, rdx
    jae 5f
    cmp dword ptr [rcx + 8], 8
    jne 4f
    mov rax, [rcx]
    mov rdi, [rcx + 16]
    add rdi, rbx
    mov [rbx + rax], rdi
4:
    add rcx, 24
    jmp 3b
5:
    lea rdi, [rip + kmini_pd]
    mov eax, 0x83
    mov ecx, 64 * 512
6:
    mov [rdi], rax
    add rax, 0x200000
    add rdi, 8
    dec ecx
    jnz 6b
    lea rdi, [rip + kmini_pdpt]
    lea rax, [rip + kmini_pd]
    or rax, 3
    mov ecx, 64
7:
    mov [rdi], rax
    add rax, 4096
    add rdi, 8
    dec ecx
    jnz 7b
    lea rax, [rip + kmini_pdpt]
    or rax, 3
    mov [rip + kmini_pml4], rax
    lea rax, [rip + kmini_pml4]
    mov rcx, cr4
    bt rcx, 12
    jnc 9f
    or rax, 3
    mov [rip + kmini_pml5], rax
    lea rax, [rip + kmini_pml5]
9:
    mov cr3, rax
    mov rdi, r15
    mov rsi, r14
    lea rdx, [rip + __image_start]
    lea rcx, [rip + __image_end]
    call kmain
8:
    hlt
    jmp 8b

    .balign 4096
pvh_pml4:
    .zero 4096
pvh_pdpt:
    .zero 4096
pvh_pd:
    .zero 4096
    .zero 1024
pvh_stack_top:

    .section .note.xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad 0x100000

    .section .data.kmini_gdt, "aw"
    .balign 8
kmini_gdt_ptr:
    .word gdt_end - gdt - 1
    .quad 0

    .section .bss.kmini, "aw", @nobits
    .balign 4096
kmini_pml5:
    .zero 4096
kmini_pml4:
    .zero 4096
kmini_pdpt:
    .zero 4096
kmini_pd:
    .zero 64 * 4096
kmini_stack:
    .zero 256 * 1024
kmini_stack_top:

    .section .text.kmini_isr, "ax"
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
isr_\n:
    push 0
    push \n
    jmp isr_common
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
isr_\n:
    push \n
    jmp isr_common
    .endr
isr_common:
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    mov rcx, cr2
    and rsp, -16
    call kmini_exception

    .section .data.rel.ro.kmini_isr, "aw"
    .balign 8
    .global kmini_isr_table
kmini_isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_\n
    .endr
"#
);

// ---- serial console (COM1) ----------------------------------------------------------------

const COM1: u16 = 0x3f8;

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O to the COM1 UART registers only; no memory is touched.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O read of a COM1 UART register only; no memory is touched.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) }
    v
}

/// The serial port, 115200 8N1, polled.
struct Serial;

impl Serial {
    fn init() {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xc7);
        outb(COM1 + 4, 0x03);
    }

    fn put(b: u8) {
        for _ in 0..100_000 {
            if inb(COM1 + 5) & 0x20 != 0 {
                break;
            }
        }
        outb(COM1, b);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Serial::put(b'\r');
            }
            Serial::put(b);
        }
        Ok(())
    }
}

// ---- heap ----------------------------------------------------------------------------------

/// A bump allocator: first over a static arena in the image, then over a region of a
/// scratch area. Freeing the most recent allocation gives it back; other frees are no-ops.
struct Bump {
    next: AtomicU64,
    end: AtomicU64,
}

#[repr(C, align(4096))]
struct Arena([u8; 1 << 20]);

static mut ARENA: Arena = Arena([0; 1 << 20]);

#[global_allocator]
static HEAP: Bump = Bump { next: AtomicU64::new(0), end: AtomicU64::new(0) };

impl Bump {
    fn set_region(&self, start: u64, end: u64) {
        self.end.store(end, Ordering::SeqCst);
        self.next.store(start, Ordering::SeqCst);
    }
}

// SAFETY: `alloc` hands out disjoint ranges of memory that nothing else uses (the static
// arena, then a heap region taken out of the free map and refused by `IdentityMem`), each
// aligned as asked; the compare-exchange makes concurrent calls safe (there is one CPU).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        loop {
            let cur = self.next.load(Ordering::SeqCst);
            let end = self.end.load(Ordering::SeqCst);
            let Some((start, next)) = bump(cur, end, layout.size() as u64, layout.align() as u64) else {
                return core::ptr::null_mut();
            };
            if self.next.compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return start as *mut u8;
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let start = ptr as u64;
        let _ = self.next.compare_exchange(start + layout.size() as u64, start, Ordering::SeqCst, Ordering::SeqCst);
    }
}

// ---- identity-mapped physical memory -------------------------------------------------------

/// Physical memory through the identity map: only RAM below [`MAP_LIMIT`], never the first
/// 256 bytes (so never the null pointer; QEMU's PVH memory map sits in page 0), never the
/// kernel's own image or heap (where Rust objects live).
struct IdentityMem {
    ram: Vec<PhysRange>,
    own: Vec<PhysRange>,
}

impl IdentityMem {
    fn new(ram: &[PhysRange], own: Vec<PhysRange>) -> Self {
        let window = PhysRange::from_bounds(PhysAddr::new(0x100), PhysAddr::new(MAP_LIMIT)).expect("window");
        Self { ram: intersect(ram, &[window]), own }
    }

    fn check(&self, access: Access, phys: PhysAddr, len: usize) -> Result<(), MemError> {
        check_access(&self.ram, &self.own, access, phys, len)
    }
}

impl PhysRead for IdentityMem {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(Access::Read, phys, buf.len())?;
        // SAFETY: `check` proved [phys, phys + len) is RAM inside the identity map (so the
        // address is the pointer), not null, and disjoint from the image and heap, so no
        // Rust object is aliased; `buf` is a distinct live buffer of `len` bytes.
        unsafe { core::ptr::copy_nonoverlapping(phys.as_u64() as *const u8, buf.as_mut_ptr(), buf.len()) }
        Ok(())
    }
}

impl PhysWrite for IdentityMem {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        self.check(Access::Write, phys, data.len())?;
        // SAFETY: as in `read_phys`: identity-mapped RAM outside every Rust object.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), phys.as_u64() as *mut u8, data.len()) }
        Ok(())
    }
}

// ---- exceptions ----------------------------------------------------------------------------

unsafe extern "C" {
    static kmini_isr_table: [u64; 32];
}

static mut IDT: [u64; 64] = [0; 64];

fn load_idt() {
    // SAFETY: the table is a relocated array of 32 stub addresses emitted by the entry
    // assembly; reading it is a plain read of initialized data.
    let stubs = unsafe { kmini_isr_table };
    let mut idt = [0u64; 64];
    for (i, &a) in stubs.iter().enumerate() {
        idt[2 * i] = (a & 0xffff) | (0x10 << 16) | (0x8e00 << 32) | ((a >> 16) & 0xffff) << 48;
        idt[2 * i + 1] = a >> 32;
    }
    let base = &raw mut IDT;
    // SAFETY: IDT is only written here, once, before any exception can use it.
    unsafe { base.write(idt) };
    let mut ptr = [0u8; 10];
    ptr[..2].copy_from_slice(&(64 * 8 - 1u16).to_le_bytes());
    ptr[2..].copy_from_slice(&(base as u64).to_le_bytes());
    // SAFETY: `ptr` is a valid 10-byte IDT descriptor naming a static table of 32 gates
    // whose handlers print and halt.
    unsafe { asm!("lidt [{}]", in(reg) ptr.as_ptr(), options(nostack, readonly)) }
}

#[unsafe(no_mangle)]
extern "C" fn kmini_exception(vector: u64, error: u64, rip: u64, cr2: u64) -> ! {
    let _ = writeln!(Serial, "kho-mini: EXCEPTION {vector} error {error:#x} at rip {rip:#x} cr2 {cr2:#x}");
    halt()
}

/// Whether 5-level paging (CR4.LA57) is on: the previous kernel's choice, kept.
fn five_level_paging() -> bool {
    let cr4: u64;
    // SAFETY: reading CR4 has no side effect; this kernel runs at CPL 0.
    unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags)) }
    cr4 & (1 << 12) != 0
}

fn halt() -> ! {
    loop {
        // SAFETY: `hlt` with interrupts off stops this CPU; nothing is touched.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Serial, "kho-mini: PANIC: {info}");
    halt()
}

// ---- main ----------------------------------------------------------------------------------

fn fail(what: &str, e: &dyn core::fmt::Display) -> ! {
    let _ = writeln!(Serial, "kho-mini: {what}: {e}");
    halt()
}

#[unsafe(no_mangle)]
extern "C" fn kmain(info: u64, kind: u64, image_start: u64, image_end: u64) -> ! {
    Serial::init();
    let arena = (&raw mut ARENA) as u64;
    HEAP.set_region(arena, arena + (1 << 20));
    load_idt();
    let out = &mut Serial;
    let how = if kind == KIND_PVH { "PVH start info" } else { "boot_params" };
    // A newline first: firmware may have left a partial line on the console.
    let paging = if five_level_paging() { 5 } else { 4 };
    let _ = writeln!(
        out,
        "\nkho-mini: started at {image_start:#x}-{image_end:#x}, {how} at {info:#x}, {paging}-level paging"
    );
    let image = PhysRange::from_bounds(PhysAddr::new(image_start), PhysAddr::new(image_end))
        .unwrap_or_else(|| fail("bad image bounds", &image_end));
    let all = [PhysRange::from_bounds(PhysAddr::new(0), PhysAddr::new(MAP_LIMIT)).expect("window")];
    let boot_mem = IdentityMem::new(&all, vec![image]);
    let probe = if kind == KIND_PVH {
        pvh::boot_params_from_start_info(&boot_mem, PhysAddr::new(info))
            .and_then(|bp| Probe::from_bytes(&boot_mem, PhysAddr::new(0), bp, image))
    } else {
        Probe::new(&boot_mem, PhysAddr::new(info), image)
    };
    let mut probe = probe.unwrap_or_else(|e| fail("cannot read the boot data", &e));
    let ram: u64 = probe.ram.iter().map(|r| r.len()).sum();
    let _ = writeln!(
        out,
        "kho-mini: {} MiB RAM in {} ranges; command line \"{}\"",
        ram >> 20,
        probe.ram.len(),
        probe.cmdline
    );
    let heap = probe.heap_region(HEAP_MAX).unwrap_or_else(|| fail("no memory for the heap", &HEAP_MAX));
    HEAP.set_region(heap.start().as_u64(), heap.end().as_u64());
    for (what, r) in &probe.used {
        let _ = writeln!(out, "kho-mini:   in use: {r} {what}");
    }
    let mem = IdentityMem::new(&probe.ram, vec![image, heap]);
    let summary = flow::run(&mem, &probe, out).unwrap_or_else(|e| fail("cannot boot the next kernel", &e));
    let j = summary.jump;
    let _ = writeln!(out, "kho-mini: jumping to {} (rsi = boot_params {})", j.entry, j.boot_params);
    // SAFETY: `prepare_next` copied a 64-bit bzImage kernel to `j.kernel` with `init_size`
    // bytes free from its load address, and built its boot_params; the identity map, the
    // GDT (__BOOT_CS 0x10, __BOOT_DS 0x18) and interrupts off are as the 64-bit boot
    // protocol asks. Control never returns.
    unsafe {
        asm!("cli", "jmp {entry}", entry = in(reg) j.entry.as_u64(), in("rsi") j.boot_params.as_u64(), options(noreturn))
    }
}

//! The kexec entry trampoline: 32 bytes of hand-assembled x86-64 code.
//!
//! `kexec_load` ends in the kernel's relocation code, which jumps to the image's entry point
//! in 64-bit mode with an identity map, a flat GDT and every general register zero. Linux's
//! 64-bit boot protocol wants `rsi` = the zero page and execution at the kernel's load
//! address + 0x200. The trampoline bridges the two:
//!
//! ```text
//! 48 be <imm64>   mov rsi, boot_params    REX.W + B8+r (r = 6, rsi): load a 64-bit immediate
//! 48 bc <imm64>   mov rsp, stack_top      REX.W + B8+r (r = 4, rsp): a stack, in case
//! 48 b8 <imm64>   mov rax, entry          REX.W + B8+r (r = 0, rax)
//! ff e0           jmp rax                 FF /4, ModRM 11 100 000: jump to rax
//! ```
//!
//! Linux's own startup code sets up its stack before it pushes anything; the stack is there
//! for other kernels (and costs nothing). [`decode`] reads the bytes back, so tests check
//! the encoding instead of trusting the table above.

use alloc::vec::Vec;

/// Bytes of trampoline code.
pub const CODE_BYTES: usize = 32;

const REX_W: u8 = 0x48;
const MOV_IMM64: u8 = 0xb8;
/// Register numbers in the B8+r encoding.
const RAX: u8 = 0;
const RSP: u8 = 4;
const RSI: u8 = 6;

/// Builds the trampoline: `rsi = boot_params`, `rsp = stack_top`, jump to `entry`.
#[must_use]
pub fn build(boot_params: u64, stack_top: u64, entry: u64) -> [u8; CODE_BYTES] {
    let mut code = [0u8; CODE_BYTES];
    for (i, (reg, imm)) in [(RSI, boot_params), (RSP, stack_top), (RAX, entry)].into_iter().enumerate() {
        let at = i * 10;
        code[at] = REX_W;
        code[at + 1] = MOV_IMM64 + reg;
        code[at + 2..at + 10].copy_from_slice(&imm.to_le_bytes());
    }
    code[30] = 0xff;
    code[31] = 0xe0;
    code
}

/// One decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// `mov <reg>, imm64`, register named as in assembly.
    MovImm64 {
        /// "rax", "rsp", "rsi", ...
        reg: &'static str,
        /// The immediate.
        imm: u64,
    },
    /// `jmp rax`.
    JmpRax,
}

const REG_NAMES: [&str; 8] = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"];

/// Decodes the instruction forms the trampoline uses (REX.W B8+r imm64 and FF E0).
///
/// # Errors
/// The offset of the first byte that is not one of those forms (or a truncated immediate).
pub fn decode(code: &[u8]) -> Result<Vec<Insn>, usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        match code[i..] {
            [REX_W, op, ref rest @ ..] if (MOV_IMM64..MOV_IMM64 + 8).contains(&op) && rest.len() >= 8 => {
                let imm = u64::from_le_bytes(rest[..8].try_into().map_err(|_| i)?);
                out.push(Insn::MovImm64 { reg: REG_NAMES[usize::from(op - MOV_IMM64)], imm });
                i += 10;
            }
            [0xff, 0xe0, ..] => {
                out.push(Insn::JmpRax);
                i += 2;
            }
            _ => return Err(i),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_to_the_documented_sequence() {
        let code = build(0x7ff_e000, 0x7ff_f000, 0x100_0200);
        assert_eq!(
            decode(&code).unwrap(),
            [
                Insn::MovImm64 { reg: "rsi", imm: 0x7ff_e000 },
                Insn::MovImm64 { reg: "rsp", imm: 0x7ff_f000 },
                Insn::MovImm64 { reg: "rax", imm: 0x100_0200 },
                Insn::JmpRax,
            ]
        );
    }

    #[test]
    fn bytes_are_the_reference_encoding() {
        // As printed by `objdump -D -b binary -mi386:x86-64` for these three movs and the jmp.
        let code = build(0x1122_3344_5566_7788, 0x10, 0xdead_beef);
        assert_eq!(&code[..10], &[0x48, 0xbe, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&code[10..12], &[0x48, 0xbc]);
        assert_eq!(&code[20..30], &[0x48, 0xb8, 0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0]);
        assert_eq!(&code[30..], &[0xff, 0xe0]);
    }

    #[test]
    fn decode_refuses_other_bytes() {
        assert_eq!(decode(&[0x90]), Err(0));
        let code = build(1, 2, 3);
        assert_eq!(decode(&code[..25]), Err(20), "truncated immediate");
        assert_eq!(decode(&code[..31]), Err(30));
    }
}

//! A small x86-64 decoder for the instructions a process-mode guest may trap on: port I/O (the
//! hypercalls) and the privileged instructions Solo5's hvt bindings execute at start and exit.
//! It finds what the instruction is and how long it is; the trap handler (`trap.rs`) emulates
//! it, or names `in` in its error. Everything else is `None`, and the trap is the guest's.

/// Where an `in` or `out` takes its port from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// `DX`.
    Dx,
    /// An immediate byte.
    Imm(u8),
}

/// The instructions the trap handler knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `out`: `size` bytes (1, 2 or 4) of `AL`/`AX`/`EAX`.
    Out { port: Port, size: usize },
    /// `in`: never allowed, but named in the error.
    In { port: Port, size: usize },
    /// `wrmsr`.
    Wrmsr,
    /// `lgdt`, `lidt` (`0F 01 /2`, `/3`) and `ltr` (`0F 00 /3`).
    LoadDescriptorTable,
    /// `mov` to SS, DS or ES (`8E /r`); FS, GS and CS are not Solo5's.
    MovToSegment,
    /// `lretq` (`REX.W CB`).
    FarReturn,
}

/// A decoded instruction: what it is, and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub op: Op,
    pub len: usize,
}

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// Decodes the instruction at the start of `code` (the bytes at the trapping RIP; fewer than
/// [`MAX_LEN`] at the end of guest memory). `None` if it is none of [`Op`] or is cut short.
pub fn decode(code: &[u8]) -> Option<Insn> {
    let mut i = 0;
    let mut operand16 = false;
    let mut rex_w = false;
    // Legacy prefixes, then at most one REX right before the opcode.
    while let Some(&b) = code.get(i) {
        match b {
            0x66 => operand16 = true,
            0x67 | 0xF0 | 0xF2 | 0xF3 | 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 => {}
            _ => break,
        }
        i += 1;
    }
    if let Some(&b) = code.get(i)
        && b & 0xF0 == 0x40
    {
        rex_w = b & 0x08 != 0;
        i += 1;
    }
    let wide = if operand16 { 2 } else { 4 };
    let opcode = *code.get(i)?;
    i += 1;
    let (op, len) = match opcode {
        0xE4..=0xE7 => {
            let port = Port::Imm(*code.get(i)?);
            let size = if opcode & 1 == 0 { 1 } else { wide };
            let op = if opcode & 2 != 0 { Op::Out { port, size } } else { Op::In { port, size } };
            (op, i + 1)
        }
        0xEC..=0xEF => {
            let size = if opcode & 1 == 0 { 1 } else { wide };
            let op = if opcode & 2 != 0 { Op::Out { port: Port::Dx, size } } else { Op::In { port: Port::Dx, size } };
            (op, i)
        }
        0xCB if rex_w => (Op::FarReturn, i),
        // ES, SS and DS are 0, 2 and 3 in ModRM's reg field.
        0x8E if matches!((*code.get(i)? >> 3) & 7, 0 | 2 | 3) => (Op::MovToSegment, i + modrm_len(&code[i..])?),
        0x0F => match *code.get(i)? {
            0x30 => (Op::Wrmsr, i + 1),
            0x01 | 0x00 => {
                let second = code[i];
                let modrm = *code.get(i + 1)?;
                let reg = (modrm >> 3) & 7;
                let known = match second {
                    // Register forms of 0F 01 are other instructions (xgetbv, vmcall, ...).
                    0x01 => (reg == 2 || reg == 3) && modrm >> 6 != 3,
                    _ => reg == 3,
                };
                if !known {
                    return None;
                }
                (Op::LoadDescriptorTable, i + 1 + modrm_len(&code[i + 1..])?)
            }
            _ => return None,
        },
        _ => return None,
    };
    (len <= code.len() && len <= MAX_LEN).then_some(Insn { op, len })
}

/// Length of a ModRM byte with its SIB and displacement (64-bit addressing).
fn modrm_len(code: &[u8]) -> Option<usize> {
    let modrm = *code.first()?;
    let (mode, rm) = (modrm >> 6, modrm & 7);
    if mode == 3 {
        return Some(1);
    }
    let mut len = 1;
    let mut disp = match mode {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = *code.get(1)?;
        len += 1;
        if mode == 0 && sib & 7 == 5 {
            disp = 4;
        }
    } else if mode == 0 && rm == 5 {
        disp = 4; // RIP-relative
    }
    Some(len + disp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(code: &[u8]) -> Option<(Op, usize)> {
        decode(code).map(|i| (i.op, i.len))
    }

    #[test]
    fn port_io() {
        assert_eq!(op(&[0xEF]), Some((Op::Out { port: Port::Dx, size: 4 }, 1)));
        assert_eq!(op(&[0x66, 0xEF]), Some((Op::Out { port: Port::Dx, size: 2 }, 2)));
        assert_eq!(op(&[0xEE, 0x90]), Some((Op::Out { port: Port::Dx, size: 1 }, 1)));
        assert_eq!(op(&[0xE7, 0x80]), Some((Op::Out { port: Port::Imm(0x80), size: 4 }, 2)));
        assert_eq!(op(&[0xE6, 0x80]), Some((Op::Out { port: Port::Imm(0x80), size: 1 }, 2)));
        assert_eq!(op(&[0xED]), Some((Op::In { port: Port::Dx, size: 4 }, 1)));
        assert_eq!(op(&[0xE4, 0x60]), Some((Op::In { port: Port::Imm(0x60), size: 1 }, 2)));
        assert_eq!(op(&[0xE7]), None, "immediate cut short");
    }

    #[test]
    fn solo5_start_and_exit() {
        assert_eq!(op(&[0x0F, 0x30]), Some((Op::Wrmsr, 2)));
        // lgdt 0x1234(%rip); lidt (%rax); ltr %ax
        assert_eq!(op(&[0x0F, 0x01, 0x15, 0x34, 0x12, 0, 0]), Some((Op::LoadDescriptorTable, 7)));
        assert_eq!(op(&[0x0F, 0x01, 0x18]), Some((Op::LoadDescriptorTable, 3)));
        assert_eq!(op(&[0x0F, 0x00, 0xD8]), Some((Op::LoadDescriptorTable, 3)));
        // mov %eax, %ss; mov 8(%rsp), %ds (SIB and disp8)
        assert_eq!(op(&[0x8E, 0xD0]), Some((Op::MovToSegment, 2)));
        assert_eq!(op(&[0x8E, 0x5C, 0x24, 0x08]), Some((Op::MovToSegment, 4)));
        assert_eq!(op(&[0x8E, 0xC0]), Some((Op::MovToSegment, 2)), "mov %eax, %es");
        assert_eq!(op(&[0x8E, 0xE0]), None, "mov %eax, %fs is not on the list");
        assert_eq!(op(&[0x8E, 0xE8]), None, "nor mov %eax, %gs");
        assert_eq!(op(&[0x48, 0xCB]), Some((Op::FarReturn, 2)));
        assert_eq!(op(&[0xCB]), None, "a 32-bit far return is not Solo5's");
    }

    #[test]
    fn everything_else_is_none() {
        for code in [&[][..], &[0xF4], &[0xFA], &[0x0F, 0x01, 0xD0], &[0x0F, 0x22, 0xD8], &[0x0F], &[0x66; 20]] {
            assert_eq!(decode(code), None, "{code:02x?}");
        }
        // Cut short inside the displacement.
        assert_eq!(decode(&[0x0F, 0x01, 0x15, 0x34]), None);
    }
}

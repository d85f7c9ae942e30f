//! The floor: the cost of one bare VM exit on this host, measured with a minimal KVM loop
//! (no tender code at all), for a guest at CPL 3 (where guest-rt runs applications) and at CPL 0.
//!
//! `cargo bench -p tender --bench exit_floor` prints nanoseconds per `out` → KVM_RUN return →
//! KVM_RUN round trip. docs/PERFORMANCE.md compares tender's hypercalls with this figure.

use std::time::Instant;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};

const MEM: usize = 2 << 20;
const GDT: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const TSS: u64 = 0x5000;
const CODE: u64 = 0x8000;
const STACK: u64 = 0x10_0000;
const PORT: u16 = 0x501;
const IOMAP_OFFSET: u16 = 104;
const IOMAP_BYTES: usize = 0x600 / 8 + 1;

fn put(mem: &mut [u8], at: u64, bytes: &[u8]) {
    mem[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

/// Exits per second of `iterations` round trips with the guest at `cpl`.
fn measure(cpl: u8, iterations: u32) -> f64 {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    // SAFETY: a fresh anonymous mapping, owned by this function and unmapped at its end.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap");
    // SAFETY: `base` is a valid, exclusive, zeroed mapping of MEM bytes.
    let mem: &mut [u8] = unsafe { std::slice::from_raw_parts_mut(base.cast(), MEM) };
    // Identity map the first 2 MiB with one large page, user-accessible.
    put(mem, PML4, &(PDPT | 7).to_le_bytes());
    put(mem, PDPT, &(PD | 7).to_le_bytes());
    put(mem, PD, &(0x87u64).to_le_bytes());
    // TSS with an I/O bitmap that opens PORT..PORT+3 (the rest stays closed).
    put(mem, TSS + 102, &IOMAP_OFFSET.to_le_bytes());
    let mut iomap = vec![0xffu8; IOMAP_BYTES];
    for p in PORT..PORT + 4 {
        iomap[usize::from(p / 8)] &= !(1 << (p % 8));
    }
    put(mem, TSS + u64::from(IOMAP_OFFSET), &iomap);
    // Guest code: loop { out dx, eax }.
    put(mem, CODE, &[0x66, 0xba, PORT as u8, (PORT >> 8) as u8, 0xef, 0xeb, 0xfd]);

    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: mem.as_ptr() as u64,
    };
    // SAFETY: the region is `mem`, which lives until after the VM is dropped below.
    unsafe { vm.set_user_memory_region(region) }.expect("memory region");
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).expect("cpuid");
    vcpu.set_cpuid2(&cpuid).expect("set cpuid");

    let mut sregs = vcpu.get_sregs().expect("sregs");
    let rpl = u16::from(cpl);
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: if cpl == 3 { 0x20 | rpl } else { 0x08 },
        type_: 11,
        present: 1,
        dpl: cpl,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment { selector: if cpl == 3 { 0x18 | rpl } else { 0x10 }, type_: 3, l: 0, db: 1, ..code };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        base: TSS,
        limit: u32::from(IOMAP_OFFSET) + IOMAP_BYTES as u32,
        selector: 0x28,
        type_: 11,
        present: 1,
        s: 0,
        dpl: 0,
        db: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 0x37;
    sregs.cr0 = guest_abi::X86_CR0_INIT;
    sregs.cr3 = PML4;
    sregs.cr4 = guest_abi::X86_CR4_INIT;
    sregs.efer = guest_abi::X86_EFER_INIT;
    vcpu.set_sregs(&sregs).expect("set sregs");
    let regs = kvm_bindings::kvm_regs { rip: CODE, rsp: STACK, rflags: 2, ..Default::default() };
    vcpu.set_regs(&regs).expect("set regs");

    // Warm up, then time.
    for _ in 0..1000 {
        assert!(matches!(vcpu.run(), Ok(VcpuExit::IoOut(PORT, _))), "guest must exit on its out");
    }
    let start = Instant::now();
    for _ in 0..iterations {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT, _)) => {}
            other => panic!("unexpected exit: {other:?}"),
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iterations);
    drop(vcpu);
    drop(vm);
    // SAFETY: the VM that mapped it is gone; nothing else refers to the mapping.
    unsafe { libc::munmap(base, MEM) };
    ns
}

fn main() {
    let iterations: u32 = std::env::var("FLOOR_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    for cpl in [3u8, 0] {
        let mut runs: Vec<f64> = (0..5).map(|_| measure(cpl, iterations)).collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "exit floor, guest at CPL {cpl}: median {:.0} ns per exit (min {:.0}, max {:.0}; 5 runs x {iterations})",
            runs[2], runs[0], runs[4]
        );
    }
}

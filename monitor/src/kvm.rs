//! KVM: the VM, its one vCPU and the vCPU's initial state (ABI section 4).

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use guest_abi::{
    BOOT_GDT_CODE_SEL, BOOT_GDT_DATA_SEL, BOOT_GDT_GPA, BOOT_INFO_GPA, BOOT_PML4_GPA, X86_CR0_INIT, X86_CR4_INIT,
    X86_EFER_INIT, X86_RFLAGS_INIT,
};

use crate::memory::GuestRam;

const KVM_API_VERSION: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("KVM: unsupported API version {0}")]
    ApiVersion(i32),
    #[error("KVM: host does not support {0}")]
    MissingCap(&'static str),
    #[error("KVM: host TSC is unstable, cannot continue")]
    UnstableTsc,
    #[error("KVM: ioctl ({0}) failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
}

/// A VM with guest RAM registered and one vCPU.
pub struct Machine {
    pub vm: VmFd,
    pub vcpu: VcpuFd,
    /// Guest TSC frequency in Hz (boot info `cpu_cycle_freq`).
    pub tsc_hz: u64,
}

fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Ioctl(name, e)
}

impl Machine {
    pub fn new(ram: &GuestRam) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let api = kvm.get_api_version();
        if api != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(api));
        }
        for (cap, name) in [(Cap::UserMemory, "KVM_CAP_USER_MEMORY"), (Cap::GetTscKhz, "KVM_CAP_GET_TSC_KHZ")] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.total(),
            userspace_addr: ram.host_base() as u64,
        };
        // SAFETY: the region is exactly our guest mapping, which lives (in `GuestRam`) as long as
        // the VM: the `Vm` that owns both drops the machine first.
        unsafe { vm.set_user_memory_region(region) }.map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        let tsc_khz = vcpu.get_tsc_khz().map_err(|e| {
            if e.errno() == libc::EIO { KvmError::UnstableTsc } else { KvmError::Ioctl("KVM_GET_TSC_KHZ", e) }
        })?;
        Ok(Machine { vm, vcpu, tsc_hz: u64::from(tsc_khz) * 1000 })
    }

    /// Long mode, flat segments, the tender's page tables; RIP at the entry point, RSP at the
    /// top of guest memory, RDI at the boot info.
    pub fn set_boot_state(&self, entry: u64, mem_size: u64) -> Result<(), KvmError> {
        let mut sregs = self.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: BOOT_GDT_CODE_SEL,
            type_: 9,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment { selector: BOOT_GDT_DATA_SEL, type_: 3, db: 1, l: 0, ..code };
        sregs.cs = code;
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.gdt.base = BOOT_GDT_GPA;
        sregs.gdt.limit = 3 * 8 - 1;
        sregs.cr0 = X86_CR0_INIT;
        sregs.cr3 = BOOT_PML4_GPA;
        sregs.cr4 = X86_CR4_INIT;
        sregs.efer = X86_EFER_INIT;
        self.vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;

        let regs = kvm_bindings::kvm_regs {
            rip: entry,
            rsp: mem_size - 8,
            rdi: BOOT_INFO_GPA,
            rflags: X86_RFLAGS_INIT,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))
    }
}

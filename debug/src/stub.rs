//! The GDB stub as an observer of the run: it serves gdb whenever the guest stops (at its first
//! instruction, a breakpoint, a step, a Ctrl-C) and lets it run when gdb resumes it.

use std::collections::VecDeque;
use std::net::TcpListener;

use gdbstub::common::Signal;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use kvm_ioctls::VcpuFd;
use tender::observe::{Control, Observer, Stop, Stopped};
use tender::{RunEnd, Vm};
use tender_seccomp::Allowlist;

use crate::conn::Conn;
use crate::kick;
use crate::target::Debugger;
use guest_abi::TENDER_DEBUG_PORT;

type Machine = GdbStubStateMachine<'static, Debugger, Conn>;

pub struct Stub {
    fd: i32,
    mem_fd: i32,
    target: Debugger,
    /// None once gdb detached or is gone: the guest then runs to its own end.
    gdb: Option<Machine>,
    /// Bytes from gdb not yet given to the state machine.
    input: VecDeque<u8>,
}

impl Stub {
    /// Listens on 127.0.0.1:`port` (0: any free port), says where, and waits for gdb.
    pub fn listen(vm: &Vm, port: u16) -> Result<Self, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("gdb: cannot listen on 127.0.0.1:{port}: {e}"))?;
        let port = listener.local_addr().map_err(|e| format!("gdb: {e}"))?.port();
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "tender-debug: waiting for gdb on 127.0.0.1:{port} (gdb KERNEL -ex 'target remote 127.0.0.1:{port}')\n"
            )
            .as_bytes(),
        );
        let (stream, _) = listener.accept().map_err(|e| format!("gdb: cannot accept a connection: {e}"))?;
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(stream);
        let fd = conn.fd();
        kick::watch(fd).map_err(|e| format!("gdb: cannot watch the connection: {e}"))?;
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/proc/self/mem")
            .map_err(|e| format!("gdb: cannot open /proc/self/mem (to write breakpoints): {e}"))?;
        let mem_fd = std::os::fd::AsRawFd::as_raw_fd(&mem);
        let mut target = Debugger::new(vm.ram().clone(), mem);
        let gdb = GdbStub::new(conn).run_state_machine(&mut target).map_err(|e| format!("gdb: {e}"))?;
        Ok(Stub { fd, mem_fd, target, gdb: Some(gdb), input: VecDeque::new() })
    }

    /// Serves gdb while the guest is stopped (its registers loaded), until gdb resumes it,
    /// detaches or kills it.
    fn serve(&mut self, vcpu: &mut VcpuFd) -> Control {
        let mut buf = [0u8; 4096];
        loop {
            let Some(gdb) = self.gdb.take() else { return Control::Resume };
            let next = match gdb {
                GdbStubStateMachine::Idle(mut idle) => {
                    if self.input.is_empty() {
                        match idle.borrow_conn().read(&mut buf) {
                            Ok(n) if n > 0 => self.input.extend(&buf[..n]),
                            // gdb is gone: as a detach.
                            _ => return self.release(vcpu),
                        }
                    }
                    let byte = self.input.pop_front().unwrap_or_default();
                    idle.incoming_data(&mut self.target, byte)
                }
                GdbStubStateMachine::Running(running) => {
                    self.gdb = Some(GdbStubStateMachine::Running(running));
                    vcpu.get_kvm_run().immediate_exit = 0;
                    return match self.target.apply(vcpu) {
                        Ok(()) => Control::Resume,
                        Err(_) => self.release(vcpu),
                    };
                }
                GdbStubStateMachine::CtrlCInterrupt(c) => {
                    c.interrupt_handled(&mut self.target, Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
                }
                GdbStubStateMachine::Disconnected(d) => {
                    return match d.get_reason() {
                        DisconnectReason::Kill => Control::Kill,
                        _ => self.release(vcpu),
                    };
                }
            };
            match next {
                Ok(gdb) => self.gdb = Some(gdb),
                // A broken connection or a packet gdbstub cannot answer: as a detach.
                Err(_) => return self.release(vcpu),
            }
        }
    }

    /// gdb detached or is gone: no breakpoints, no stepping, the guest runs on.
    fn release(&mut self, vcpu: &mut VcpuFd) -> Control {
        self.gdb = None;
        let _ = self.target.release(vcpu);
        vcpu.get_kvm_run().immediate_exit = 0;
        Control::Resume
    }

    /// The guest stopped with `reason` while gdb waited for it to.
    fn report(&mut self, vcpu: &mut VcpuFd, reason: SingleThreadStopReason<u64>) -> Control {
        match self.gdb.take() {
            Some(GdbStubStateMachine::Running(running)) => match running.report_stop(&mut self.target, reason) {
                Ok(gdb) => {
                    self.gdb = Some(gdb);
                    self.serve(vcpu)
                }
                Err(_) => self.release(vcpu),
            },
            other => {
                self.gdb = other;
                Control::Resume
            }
        }
    }

    /// What gdb sent while the guest ran (a Ctrl-C, normally).
    fn interrupted(&mut self, vcpu: &mut VcpuFd) -> Control {
        vcpu.get_kvm_run().immediate_exit = 0;
        let mut buf = [0u8; 256];
        loop {
            let Some(gdb) = self.gdb.take() else { return Control::Resume };
            let GdbStubStateMachine::Running(mut running) = gdb else {
                self.gdb = Some(gdb);
                if self.target.load(vcpu).is_err() {
                    return self.release(vcpu);
                }
                return self.serve(vcpu);
            };
            let byte = match self.input.pop_front() {
                Some(b) => b,
                None => match running.borrow_conn().try_read(&mut buf) {
                    Ok(None) => {
                        self.gdb = Some(GdbStubStateMachine::Running(running));
                        return Control::Resume;
                    }
                    Ok(Some(n)) if n > 0 => {
                        self.input.extend(&buf[..n]);
                        self.gdb = Some(GdbStubStateMachine::Running(running));
                        continue;
                    }
                    _ => {
                        return self.release(vcpu);
                    }
                },
            };
            match running.incoming_data(&mut self.target, byte) {
                Ok(gdb) => self.gdb = Some(gdb),
                Err(_) => return self.release(vcpu),
            }
        }
    }
}

impl Observer for Stub {
    fn sandbox(&self, allow: &mut Allowlist) {
        allow.debugger_fd = Some(self.fd);
        allow.debugger_mem_fd = Some(self.mem_fd);
    }

    fn start(&mut self, s: Stopped<'_>) -> Control {
        kick::arm(&mut s.vcpu.get_kvm_run().immediate_exit);
        if self.target.load(s.vcpu).is_err() {
            return self.release(s.vcpu);
        }
        self.serve(s.vcpu)
    }

    fn hypercall_done(&mut self, s: Stopped<'_>) -> Control {
        // A CPL 3 step over a hypercall's `out`: KVM loses the step's trap, so stop here.
        if self.gdb.is_none() || !self.target.cooperative_step_pending() {
            return Control::Resume;
        }
        if self.target.load(s.vcpu).is_err() || self.target.hypercall_step_done().is_err() {
            return self.release(s.vcpu);
        }
        self.report(s.vcpu, SingleThreadStopReason::DoneStep)
    }

    fn stop(&mut self, s: Stopped<'_>, why: Stop) -> Control {
        match why {
            Stop::Interrupted => self.interrupted(s.vcpu),
            Stop::Debug(arch) if self.gdb.is_some() => match self.target.debug_exit(s.vcpu, arch) {
                Ok(Some(reason)) => {
                    if self.target.load(s.vcpu).is_err() {
                        return self.release(s.vcpu);
                    }
                    self.report(s.vcpu, reason)
                }
                Ok(None) => Control::Resume,
                Err(_) => self.release(s.vcpu),
            },
            // A debug exit after gdb left (a step already under way): nothing to report.
            Stop::Debug(_) => self.release(s.vcpu),
            Stop::Port { port: TENDER_DEBUG_PORT, value } => {
                if self.target.load(s.vcpu).is_err() {
                    return self.release(s.vcpu);
                }
                match self.target.guest_report(u64::from(value)) {
                    Ok(None) => Control::Resume,
                    Ok(Some(reason)) if self.gdb.is_some() => self.report(s.vcpu, reason),
                    // gdb has left: the trap was a step or breakpoint of its time; run on.
                    Ok(Some(_)) => self.release(s.vcpu),
                    // A forged or broken area: the run ends as for any bad port access.
                    Err(_) => Control::NotMine,
                }
            }
            Stop::Port { .. } => Control::NotMine,
        }
    }

    /// Tells gdb how the guest ended, as for a process.
    fn end(&mut self, end: &RunEnd) {
        let reason = match end {
            RunEnd::Halted { status, .. } => SingleThreadStopReason::Exited(*status as u8),
            RunEnd::Killed => return,
            _ => SingleThreadStopReason::Terminated(Signal::SIGKILL),
        };
        if let Some(GdbStubStateMachine::Running(running)) = self.gdb.take() {
            let _ = running.report_stop(&mut self.target, reason);
        }
    }
}

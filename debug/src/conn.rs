//! The debugger's TCP connection, used through `read`, `write` and `recv` only: the system calls
//! the sandbox allows on it.

use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use gdbstub::conn::Connection;

pub struct Conn {
    /// Never closed: the sandbox allows no `close`, and gdbstub drops its connection when gdb
    /// detaches or a packet fails. The process's exit closes it.
    stream: ManuallyDrop<TcpStream>,
    out: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn { stream: ManuallyDrop::new(stream), out: Vec::with_capacity(4096) }
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Reads what is there, waiting for at least one byte; `Ok(0)` when gdb is gone.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes.
            let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Reads what is there without waiting: `Ok(None)` when nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        // SAFETY: as in `read`; MSG_DONTWAIT only makes the call return at once.
        let n = unsafe { libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        }
    }
}

impl Connection for Conn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        let mut done = 0;
        while done < self.out.len() {
            let rest = &self.out[done..];
            // SAFETY: `rest` is a valid buffer of `rest.len()` bytes.
            let n = unsafe { libc::write(self.fd(), rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                self.out.clear();
                return Err(e);
            }
            done += n as usize;
        }
        self.out.clear();
        Ok(())
    }
}

//! Console output through the PUTS hypercall, one exit per `print!` unless the line is long.

use core::fmt;

const LINE_BUFFER_SIZE: usize = 256;

/// A small stack buffer that collects formatted text and hands it to PUTS when full or flushed.
pub(crate) struct LineBuffer {
    buf: [u8; LINE_BUFFER_SIZE],
    len: usize,
}

impl LineBuffer {
    pub(crate) const fn new() -> Self {
        LineBuffer { buf: [0; LINE_BUFFER_SIZE], len: 0 }
    }

    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == self.buf.len() {
                self.flush();
            }
            let n = bytes.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }

    pub(crate) fn flush(&mut self) {
        if self.len > 0 {
            crate::hypercall::puts(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl fmt::Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Writes `data` to the console as it is.
pub fn puts(data: &[u8]) {
    crate::hypercall::puts(data);
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>, newline: bool) {
    let mut line = LineBuffer::new();
    let _ = fmt::Write::write_fmt(&mut line, args);
    if newline {
        line.push(b"\n");
    }
    line.flush();
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(::core::format_args!($($arg)*), false) };
}

/// Prints to the console, with a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::console::_print(::core::format_args!(""), true) };
    ($($arg:tt)*) => { $crate::console::_print(::core::format_args!($($arg)*), true) };
}

//! The heap: from the end of the image (`_end`, page aligned) up to `mem_size - STACK_RESERVE`.

/// Room kept for the stack, which grows down from `mem_size`.
pub const STACK_RESERVE: u64 = 1 << 20;

/// Heap bounds `(start, size)` for an image ending at `image_end`.
const fn heap_range(image_end: u64, mem_size: u64) -> (u64, u64) {
    (image_end, mem_size.saturating_sub(STACK_RESERVE).saturating_sub(image_end))
}

#[cfg(not(test))]
mod global {
    use linked_list_allocator::LockedHeap;

    #[global_allocator]
    static HEAP: LockedHeap = LockedHeap::empty();

    unsafe extern "C" {
        /// End of `.bss`, from the linker script.
        static _end: u8;
    }

    pub(crate) fn init(mem_size: u64) {
        let (start, size) = super::heap_range((&raw const _end) as u64, mem_size);
        if size > 0 {
            // SAFETY: [_end, mem_size - STACK_RESERVE) is mapped guest RAM that nothing else uses;
            // this runs once, before `main`.
            unsafe { HEAP.lock().init(start as *mut u8, size as usize) };
        }
    }
}

#[cfg(not(test))]
pub(crate) use global::init;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range() {
        assert_eq!(heap_range(0x30_0000, 512 << 20), (0x30_0000, (511 << 20) - 0x30_0000));
        assert_eq!(heap_range(0x1F_0000, 2 << 20), (0x1F_0000, 0));
    }
}

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

    pub fn free() -> usize {
        HEAP.lock().free()
    }
}

#[cfg(not(test))]
pub(crate) use global::init;

/// Heap bytes not allocated now. The allocator (linked_list_allocator) returns freed blocks to
/// its free list and merges neighbours, so memory a closed connection gave back is reused by the
/// next one; this figure counts it as free again.
pub fn heap_free() -> usize {
    #[cfg(not(test))]
    return global::free();
    #[cfg(test)]
    return 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocator guest-rt uses gives freed memory back: a heap filled with connection-sized
    /// blocks, emptied in a scattered order and filled again, holds as many blocks the second time.
    #[test]
    fn freed_blocks_are_reused() {
        use core::alloc::Layout;
        let mut arena = vec![0u64; (4 << 20) / 8];
        let mut heap = linked_list_allocator::Heap::empty();
        // SAFETY: `arena` outlives `heap` and nothing else uses it.
        unsafe { heap.init(arena.as_mut_ptr().cast(), arena.len() * 8) };
        let layout = Layout::from_size_align(16 << 10, 8).unwrap();
        let fill = |heap: &mut linked_list_allocator::Heap| {
            let mut blocks = Vec::new();
            while let Ok(p) = heap.allocate_first_fit(layout) {
                blocks.push(p);
            }
            blocks
        };
        let first = fill(&mut heap);
        assert!(first.len() > 200, "{}", first.len());
        let (even, odd): (Vec<_>, Vec<_>) = first.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for (_, p) in odd.into_iter().chain(even) {
            // SAFETY: each block came from this heap with this layout and is freed once.
            unsafe { heap.deallocate(*p, layout) };
        }
        assert_eq!(heap.used(), 0);
        assert_eq!(fill(&mut heap).len(), first.len());
    }

    #[test]
    fn range() {
        assert_eq!(heap_range(0x30_0000, 512 << 20), (0x30_0000, (511 << 20) - 0x30_0000));
        assert_eq!(heap_range(0x1F_0000, 2 << 20), (0x1F_0000, 0));
    }
}

//! The heap: from the end of the image (`_end`, page aligned) up to `mem_size - STACK_RESERVE`.

/// Room kept for the stack, which grows down from `mem_size`.
pub const STACK_RESERVE: u64 = 1 << 20;

/// Heap bounds `(start, size)` for an image ending at `image_end`.
const fn heap_range(image_end: u64, mem_size: u64) -> (u64, u64) {
    (image_end, mem_size.saturating_sub(STACK_RESERVE).saturating_sub(image_end))
}

/// Bytes at the start of a fresh block that may hold the allocator's own bookkeeping (the free
/// list's node: size and next pointer) and so are zeroed even there.
const NODE_BYTES: usize = 2 * size_of::<usize>();

/// How many bytes of a block at `ptr` of `len` bytes `alloc_zeroed` must clear, given that no
/// block handed out so far ended above `high_water`: memory above it was never written by the
/// application, and the tender gives the guest zeroed memory, so only the free list's node can
/// be there (it sits at the start of the free region the block was cut from).
const fn to_clear(ptr: usize, len: usize, high_water: usize) -> usize {
    if ptr >= high_water { if len < NODE_BYTES { len } else { NODE_BYTES } } else { len }
}

#[cfg(not(test))]
mod global {
    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicUsize, Ordering};

    use linked_list_allocator::LockedHeap;

    /// The heap, with a zeroed allocation that does not touch fresh memory: large zeroed buffers
    /// allocated up front (socket buffers) then cost guest memory only as they are used.
    struct Heap {
        inner: LockedHeap,
        /// The highest end of any block handed out so far.
        high_water: AtomicUsize,
    }

    impl Heap {
        fn note(&self, ptr: *mut u8, len: usize) {
            self.high_water.fetch_max(ptr as usize + len, Ordering::Relaxed);
        }
    }

    // SAFETY: every call goes to `LockedHeap`'s implementation; `alloc_zeroed` clears every byte
    // that may be non-zero (see `to_clear`).
    unsafe impl GlobalAlloc for Heap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            let ptr = unsafe { self.inner.alloc(layout) };
            self.note(ptr, layout.size());
            ptr
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let high_water = self.high_water.load(Ordering::Relaxed);
            // SAFETY: the caller's contract, passed on.
            let ptr = unsafe { self.inner.alloc(layout) };
            if !ptr.is_null() {
                let n = super::to_clear(ptr as usize, layout.size(), high_water);
                // SAFETY: `ptr` is a fresh block of at least `layout.size()` >= n bytes.
                unsafe { ptr.write_bytes(0, n) };
                self.note(ptr, layout.size());
            }
            ptr
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, passed on.
            unsafe { self.inner.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static HEAP: Heap = Heap { inner: LockedHeap::empty(), high_water: AtomicUsize::new(0) };

    unsafe extern "C" {
        /// End of `.bss`, from the linker script.
        static _end: u8;
    }

    pub(crate) fn init(mem_size: u64) {
        let (start, size) = super::heap_range((&raw const _end) as u64, mem_size);
        if size > 0 {
            // SAFETY: [_end, mem_size - STACK_RESERVE) is mapped guest RAM that nothing else uses;
            // this runs once, before `main`.
            unsafe { HEAP.inner.lock().init(start as *mut u8, size as usize) };
        }
    }

    pub fn free() -> usize {
        HEAP.inner.lock().free()
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
    fn only_the_free_list_node_of_fresh_memory_is_cleared() {
        assert_eq!(to_clear(0x5000, 4096, 0x5000), NODE_BYTES, "fresh: the node only");
        assert_eq!(to_clear(0x5000, 8, 0x4000), 8, "short blocks are cleared whole");
        assert_eq!(to_clear(0x4000, 4096, 0x4800), 4096, "reused memory is cleared whole");
    }

    #[test]
    fn range() {
        assert_eq!(heap_range(0x30_0000, 512 << 20), (0x30_0000, (511 << 20) - 0x30_0000));
        assert_eq!(heap_range(0x1F_0000, 2 << 20), (0x1F_0000, 0));
    }
}

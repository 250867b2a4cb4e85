//! Where a model's weights live once loaded.
//!
//! Decode reads every weight once a token, straight from memory, so the pages they sit in matter:
//! in 4 KB pages each 4 KB of the stream costs a TLB miss and a page walk, and the hardware
//! prefetchers stop at every page's end. Natively `gather` moves all of a model's weights (packed
//! values, their scales, f32 tensors) into one allocation aligned to 2 MB, and on Linux asks the
//! kernel for transparent huge pages there (`madvise`, which THP's "madvise" mode, the usual
//! default, honours). Where the kernel says no, the same bytes sit in ordinary pages. wasm keeps
//! each tensor's own buffer: the browser decides its pages, and a copy would double the tab's
//! memory while loading.

use std::sync::Arc;

/// Element types a tensor may hold: plain data, every bit pattern a value.
pub trait Plain: Copy + Default + 'static {}
impl Plain for i8 {}
impl Plain for f32 {}

/// One tensor's values: its own buffer while loading, a range of the model's shared block after
/// `gather`.
#[derive(Clone)]
pub enum Stored<T: Plain> {
    Own(Vec<T>),
    Shared(Part<T>),
}

/// len values of T at byte `at` of a block: made only by `gather`, which copied them there (its
/// fields private, so no range can point elsewhere).
#[derive(Clone)]
pub struct Part<T> {
    block: Arc<Block>,
    at: usize,
    len: usize,
    values: std::marker::PhantomData<T>,
}

/// Memory `gather` allocated: freed when the last tensor in it goes.
pub struct Block {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: plain memory owned by the block alone, written only before it is shared (`gather`)
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated by `gather` with this layout
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

impl<T: Plain> Stored<T> {
    pub fn zeroed(len: usize) -> Stored<T> {
        Stored::Own(vec![T::default(); len])
    }

    /// The values to write, while the tensor still has its own buffer (loading): None once shared.
    pub fn get_mut(&mut self) -> Option<&mut [T]> {
        match self {
            Stored::Own(v) => Some(v),
            Stored::Shared(_) => None,
        }
    }
}

impl<T: Plain> std::ops::Deref for Stored<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Stored::Own(v) => v,
            // SAFETY: `gather` copied len values of T to at (aligned for T) inside the block; only
            // those are read
            Stored::Shared(p) => unsafe { std::slice::from_raw_parts(p.block.ptr.add(p.at) as *const T, p.len) },
        }
    }
}

impl<T: Plain> std::fmt::Debug for Stored<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Stored({} values)", self.len())
    }
}

/// A tensor `gather` can move: its size in bytes, and the move itself.
pub trait Movable {
    fn bytes(&self) -> usize;
    /// Copies the values to `at` in `block` and refers to them there from now on.
    fn move_to(&mut self, block: &Arc<Block>, at: usize);
}

impl<T: Plain> Movable for Stored<T> {
    fn bytes(&self) -> usize {
        std::mem::size_of_val(&self[..])
    }
    fn move_to(&mut self, block: &Arc<Block>, at: usize) {
        let len = self.len();
        // SAFETY: `gather` sized the block for every part at 64-byte starts; nothing reads the block
        // until gather returns
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr() as *const u8, block.ptr.add(at), self.bytes()) };
        *self = Stored::Shared(Part { block: block.clone(), at, len, values: std::marker::PhantomData });
    }
}

/// The huge page size `gather` aligns to (x86-64's and most arm64 kernels').
const HUGE: usize = 2 << 20;

/// Moves `parts` into one block aligned to `HUGE`, each part starting on a 64-byte line, advised
/// for huge pages on Linux. Each part's own buffer is freed as soon as it is copied, so loading
/// peaks at the block plus one tensor. Without the memory for the block, or on wasm, the parts
/// stay where they are. (Every native model goes in a block, however small, so every native test
/// runs the weights from one; a tiny model's costs at most one huge page.)
pub fn gather(parts: &mut [&mut dyn Movable]) {
    let line = |n: usize| (n + 63) / 64 * 64;
    let total: usize = parts.iter().map(|p| line(p.bytes())).sum();
    if cfg!(target_arch = "wasm32") || total == 0 {
        return;
    }
    let layout = match std::alloc::Layout::from_size_align((total + HUGE - 1) / HUGE * HUGE, HUGE) {
        Ok(l) => l,
        Err(_) => return,
    };
    // SAFETY: a non-zero size
    let ptr = unsafe { std::alloc::alloc(layout) };
    if ptr.is_null() {
        return;
    }
    // advised before the copies below first touch its pages (alloc_zeroed would have touched them
    // all); nothing reads the gaps between parts, so they stay as they are
    advise_huge(ptr, layout.size());
    let block = Arc::new(Block { ptr, layout });
    let mut at = 0;
    for p in parts.iter_mut() {
        let bytes = p.bytes();
        p.move_to(&block, at);
        at += line(bytes);
    }
}

#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, len: usize) {
    extern "C" {
        fn madvise(addr: *mut std::os::raw::c_void, len: usize, advice: std::os::raw::c_int) -> std::os::raw::c_int;
    }
    const MADV_HUGEPAGE: std::os::raw::c_int = 14;
    // SAFETY: advice on memory this process owns; a refusal (no THP in this kernel) is harmless
    unsafe { madvise(ptr as *mut _, len, MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_ptr: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_keeps_every_tensors_values() {
        let sizes = [3 << 20, 100, 0, 1 << 20, 65];
        let wants: Vec<Vec<i8>> = sizes.iter().enumerate().map(|(i, &n)| (0..n).map(|j| (j * 7 + i) as i8).collect()).collect();
        let mut q: Vec<Stored<i8>> = wants.iter().cloned().map(Stored::Own).collect();
        let floats: Vec<f32> = (0..1001).map(|i| i as f32 * 0.5).collect();
        let mut f = Stored::Own(floats.clone());
        let mut parts: Vec<&mut dyn Movable> = q.iter_mut().map(|p| p as &mut dyn Movable).collect();
        parts.insert(2, &mut f);
        gather(&mut parts);
        for (p, want) in q.iter().zip(&wants) {
            assert_eq!(&p[..], &want[..]);
        }
        assert_eq!(&f[..], &floats[..]);
        assert_eq!(q[0].as_ptr() as usize % (2 << 20), 0, "the block starts on a huge page");
        assert!(q[1..].iter().all(|p| p.as_ptr() as usize % 64 == 0), "each tensor starts on a cache line");
        assert!(q[0].get_mut().is_none(), "shared values are read-only");
    }
}

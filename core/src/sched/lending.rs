//! MSH's reallocation: while a primary blocks (a lock, a condition variable, a
//! join…), its scavengers should not sit idle. A primary about to block *lends* them:
//! they go to the front of the shared pool. Other primaries pick them up:
//!
//! - a primary with scavengers running picks up at the end of its next sample run
//!   (at most every few hundred switches; the thread is in Rust then anyway);
//! - a primary with an empty ring would never look, so the lender *pokes* it: a
//!   compare-and-swap of its `%fs:0x38` word from 0 to its own refill coroutine, so
//!   its next yield runs that coroutine, which fills the empty slots and switches back.
//!
//! After the blocking call, the lender refills its own slots from the pool.

use super::{current, fill_slots, relink, Primary, Scavenger, POOL};
use crate::abi::Coro;
use crate::arch;
use alloc::vec::Vec;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

/// A registered primary, as other threads see it.
struct Peer {
    primary: usize,
    /// Its `%fs:0x38` word.
    next_slot: usize,
    /// Its refill coroutine.
    refill: usize,
}

static PEERS: spin::Mutex<Vec<Peer>> = spin::Mutex::new(Vec::new());

/// Adds the calling thread's Primary to the peers that lenders may poke.
pub(super) fn join(primary: *mut Primary, refill: *mut Scavenger) {
    PEERS.lock().push(Peer {
        primary: primary as usize,
        next_slot: arch::next_coro_slot() as usize,
        refill: refill as usize,
    });
}

/// Removes it again; after this no other thread touches the thread's TCB.
pub(super) fn leave(primary: *mut Primary) {
    PEERS.lock().retain(|peer| peer.primary != primary as usize);
}

/// Lends the calling primary's scavengers to the pool before it blocks. Returns
/// whether there was anything to lend.
pub fn lend() -> bool {
    let me = current();
    if me.is_null() {
        return false;
    }
    // SAFETY: `me` is this thread's Primary; as the primary (checked) we own it.
    let primary = unsafe { &mut *me };
    if !primary.ctx.running.is_null() {
        return false;
    }
    let mut lent = false;
    for slot in primary.slots.iter_mut().rev() {
        if let Some(scav) = slot.take() {
            POOL.push_front(scav);
            lent = true;
        }
    }
    if lent {
        // SAFETY: the ring is empty now.
        unsafe { arch::set_next_coro(ptr::null_mut()) };
        poke_idle_peers(me);
    }
    lent
}

/// Refills the calling primary's slots after it unblocks.
pub fn reclaim() {
    let me = current();
    // SAFETY: `me` is this thread's Primary, and we run as the primary (checked).
    unsafe {
        if !me.is_null() && (*me).ctx.running.is_null() {
            super::refill(me);
        }
    }
}

/// Points every peer whose ring is empty at its refill coroutine.
fn poke_idle_peers(me: *mut Primary) {
    for peer in PEERS
        .lock()
        .iter()
        .filter(|peer| peer.primary != me as usize)
    {
        // SAFETY: the peer is registered (it leaves under this lock before its TCB or
        // Primary go away); its next slot is a word of its live TCB. A CAS from null
        // only ever hands a thread its own refill coroutine.
        let slot = unsafe { AtomicPtr::from_ptr(peer.next_slot as *mut *mut Coro) };
        let _ = slot.compare_exchange(
            ptr::null_mut(),
            peer.refill as *mut Coro,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// A thread's refill coroutine: fills empty slots from the pool, then resumes the
/// primary, which runs the new ring from its next yield.
pub(super) unsafe extern "C" fn refill_main(own: *mut ()) -> ! {
    let own = own.cast::<Scavenger>();
    loop {
        let me = current();
        // SAFETY: the primary switched to us, so `me` is its Primary and it is
        // suspended; `own` is this thread's refill coroutine and is `running`.
        unsafe {
            let primary = &mut *me;
            fill_slots(primary);
            let next = relink(primary, ptr::null_mut());
            arch::suspend_to_primary(&mut (*own).coro, &mut primary.ctx, next);
        }
    }
}

/// At the end of a sample run (scavenger context): take lent scavengers into empty
/// slots. The ring is relinked; the switch back sets the next coroutine from it.
///
/// # Safety
/// `me` is the calling thread's Primary and one of its scavengers is running.
pub(crate) unsafe fn pick_up_lent(me: *mut Primary) {
    // SAFETY: guaranteed by the caller; the primary is suspended.
    let primary = unsafe { &mut *me };
    if primary.slots.iter().any(Option::is_none) && !POOL.is_empty() {
        fill_slots(primary);
        relink(primary, primary.ctx.running);
    }
}

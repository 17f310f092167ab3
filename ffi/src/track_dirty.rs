//! `msh run --track-dirty`: with `MSH_TRACK_DIRTY=1`, libmsh tracks which pages of the
//! process are written, for `msh checkpoint`, in a process that knows nothing of msh.
//!
//! At load a *control thread* starts and listens on the abstract unix socket
//! `msh-track-<pid>` (protocol: [`msh_core::dirty::control`]). Tracking starts at the
//! first checkpoint and follows the address space from then on: at every `collect`
//! (sent while the checkpointer holds every other thread stopped) the control thread
//! rescans `/proc/self/maps`, starts a uffd-async tracker on each new private anonymous
//! writable mapping (reported whole, since it was never tracked), drops trackers whose
//! mapping was unmapped or replaced, collects and re-arms the others, and reports
//! writable private mappings it cannot track (file-backed data, mappings userfaultfd
//! refuses) whole. Only backends that see every write without disturbing the program
//! are used: uffd-async here (mprotect and uffd-sync make kernel writes fail with
//! `EFAULT` in a program that cannot expect it).
//!
//! After each reply the control thread touches only its own stack (which is never part
//! of an image) until the next request, so a checkpointer that stops it too reads a
//! consistent image. A child made by `fork` is not tracked (it closes the socket); a
//! program started by `exec` with the environment intact is tracked on its own.

use msh_core::dirty::control::{self, CollectKind, Region, Request};
use msh_core::dirty::{self, Backend, Choice, Limit, Tracker};
use std::sync::atomic::{AtomicI32, Ordering};

/// The listening socket, closed in a forked child.
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

extern "C" fn on_load() {
    // No panic may escape into the dynamic loader.
    let _ = std::panic::catch_unwind(start);
}

fn warn(message: &str) {
    eprintln!("msh: --track-dirty: {message}");
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

fn start() {
    match std::env::var("MSH_TRACK_DIRTY").as_deref() {
        Ok("1") => {}
        Ok("" | "0") | Err(_) => return,
        Ok(other) => {
            return warn(&format!(
                "MSH_TRACK_DIRTY={other}: expected 0 or 1; not tracking"
            ))
        }
    }
    let unavailable = Backend::UffdAsync.probe().err().map(|why| {
        dirty::Error::Unavailable {
            backend: Backend::UffdAsync,
            why,
        }
        .to_string()
    });
    if let Some(reason) = &unavailable {
        warn(&format!("{reason}; checkpoints of this process will fail"));
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let fd = match listen(pid) {
        Ok(fd) => fd,
        Err(e) => {
            return warn(&format!(
                "cannot listen on @{}: {e}",
                control::socket_name(pid)
            ))
        }
    };
    LISTEN_FD.store(fd, Ordering::Relaxed);
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::pthread_atfork(None, None, Some(close_in_child)) };
    let spawned = std::thread::Builder::new()
        .name("msh-track".into())
        .spawn(move || {
            let _ = std::panic::catch_unwind(|| serve(fd, pid, unavailable));
        });
    if let Err(e) = spawned {
        warn(&format!("cannot start the control thread: {e}"));
    }
}

extern "C" fn close_in_child() {
    let fd = LISTEN_FD.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: our descriptor; close is async-signal-safe.
        unsafe { libc::close(fd) };
    }
}

/// Binds and listens on the abstract socket of `pid`.
fn listen(pid: u32) -> Result<i32, String> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno_text());
    }
    let (addr, len) = control::socket_address(pid);
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let bound = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    // SAFETY: our descriptor.
    if bound != 0 || unsafe { libc::listen(fd, 4) } != 0 {
        let e = errno_text();
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

/// A mapping we watch: tracked by its own tracker, or reported whole every time.
struct Piece {
    start: usize,
    end: usize,
    tracker: Option<Tracker>,
}

/// Lives on the control thread's stack; its heap parts are written only before the
/// re-arming step of a collect.
struct State {
    pid: u32,
    tid: u32,
    session: u64,
    epoch: u64,
    /// The control thread's stack mapping: excluded from every image.
    stack: (usize, usize),
    unavailable: Option<String>,
    pieces: Vec<Piece>,
    /// What the previous collect reported (for `collect retry`).
    stash: Stash,
    /// Where an incremental collect copies its pages for the checkpointer.
    copy: CopyBuffer,
    /// Phase A's whole runs, for the copy at the end of phase B.
    whole: Vec<(usize, usize)>,
    /// Pieces (by index) whose tracker failed in the last collect: dropped by the next.
    failed: [u64; 64],
    /// The reply buffer, kept so nothing is freed after a reply is sent.
    out: String,
}

/// The pages of an incremental collect, copied by the control thread while the process
/// is stopped into a memfd (shared memory: never part of an image) that the
/// checkpointer reads after resuming the process. Up to [`CopyBuffer::LIMIT`]; a
/// larger collect is copied by the checkpointer itself. The pages stay allocated
/// between checkpoints so that the next copy does not fault them in.
struct CopyBuffer {
    fd: i32,
    map: *mut u8,
    len: usize,
    used: usize,
    /// Not copying this time (too much, or no memfd).
    off: bool,
}

impl CopyBuffer {
    const LIMIT: usize = 256 << 20;

    fn new() -> CopyBuffer {
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"msh-track-copy".as_ptr(), libc::MFD_CLOEXEC) };
        CopyBuffer {
            fd,
            map: std::ptr::null_mut(),
            len: 0,
            used: 0,
            off: true,
        }
    }

    fn start(&mut self, copying: bool) {
        self.used = 0;
        self.off = !copying || self.fd < 0;
    }

    fn grow(&mut self, need: usize) -> bool {
        let len = need.next_power_of_two().clamp(4 << 20, Self::LIMIT);
        // SAFETY: our memfd.
        if unsafe { libc::ftruncate(self.fd, len as libc::off_t) } != 0 {
            return false;
        }
        // SAFETY: mapping our memfd, or moving our own mapping of it.
        let map = unsafe {
            if self.map.is_null() {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.fd,
                    0,
                )
            } else {
                libc::mremap(self.map.cast(), self.len, len, libc::MREMAP_MAYMOVE)
            }
        };
        if map == libc::MAP_FAILED {
            return false;
        }
        self.map = map.cast();
        self.len = len;
        true
    }

    fn append(&mut self, start: usize, pages: usize, page: usize) {
        let bytes = pages * page;
        if self.off || self.used + bytes > Self::LIMIT {
            self.off = true;
            return;
        }
        if self.used + bytes > self.len && !self.grow(self.used + bytes) {
            self.off = true;
            return;
        }
        // SAFETY: the source is a run of a readable region of this process, whose
        // other threads are stopped; the destination is inside our mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(start as *const u8, self.map.add(self.used), bytes)
        };
        self.used += bytes;
    }
}

/// The runs of the previous collect, in a mapping of our own (excluded from images,
/// like the stack): it is written after the tracked memory was re-armed.
struct Stash {
    runs: *mut (usize, usize),
    capacity: usize,
    len: usize,
    /// The previous collect reported everything, or more runs than fit.
    everything: bool,
}

impl Stash {
    /// Room for 4 M runs, reserved, not committed.
    const CAPACITY: usize = 4 << 20;

    fn new() -> Stash {
        let bytes = Self::CAPACITY * std::mem::size_of::<(usize, usize)>();
        // SAFETY: a fresh private anonymous mapping.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        let (runs, capacity) = if addr == libc::MAP_FAILED {
            (std::ptr::null_mut(), 0)
        } else {
            (addr.cast(), Self::CAPACITY)
        };
        Stash {
            runs,
            capacity,
            len: 0,
            // Until a collect succeeds, a retry must report everything.
            everything: true,
        }
    }

    fn range(&self) -> (usize, usize) {
        let start = self.runs as usize;
        (
            start,
            start + self.capacity * std::mem::size_of::<(usize, usize)>(),
        )
    }

    fn push(&mut self, run: (usize, usize)) {
        if self.len == self.capacity {
            self.everything = true;
            return;
        }
        // SAFETY: len < capacity, inside our mapping.
        unsafe { self.runs.add(self.len).write(run) };
        self.len += 1;
    }

    fn as_slice(&self) -> &[(usize, usize)] {
        if self.runs.is_null() {
            return &[];
        }
        // SAFETY: the first `len` entries were written by `push`.
        unsafe { std::slice::from_raw_parts(self.runs, self.len) }
    }
}

/// Writes reply lines through a buffer on the stack, flushing to the socket when full.
struct StackWriter {
    fd: i32,
    bytes: [u8; 4096],
    len: usize,
    ok: bool,
}

impl StackWriter {
    fn flush(&mut self) {
        self.ok = self.ok && write_all(self.fd, &self.bytes[..self.len]);
        self.len = 0;
    }
}

impl std::fmt::Write for StackWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.len + s.len() > self.bytes.len() {
            self.flush();
        }
        let end = self.len + s.len();
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn serve(listen_fd: i32, pid: u32, unavailable: Option<String>) {
    let marker = 0u8;
    let here = &marker as *const u8 as usize;
    let stack = dirty::current_mappings()
        .ok()
        .and_then(|maps| maps.into_iter().find(|m| m.start <= here && here < m.end))
        .map_or((here, here + 1), |m| (m.start, m.end));
    let mut session = 0u64;
    // SAFETY: getrandom fills the 8 bytes we pass.
    unsafe { libc::getrandom((&mut session as *mut u64).cast(), 8, 0) };
    let mut state = State {
        pid,
        // SAFETY: gettid has no preconditions.
        tid: unsafe { libc::syscall(libc::SYS_gettid) } as u32,
        session: session ^ u64::from(pid) << 32,
        epoch: 0,
        stack,
        unavailable,
        pieces: Vec::new(),
        stash: Stash::new(),
        copy: CopyBuffer::new(),
        whole: Vec::new(),
        failed: [0; 64],
        out: String::with_capacity(1 << 16),
    };
    loop {
        // SAFETY: accept on our listening socket; no address wanted.
        let conn = unsafe {
            libc::accept4(
                listen_fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            if LISTEN_FD.load(Ordering::Relaxed) < 0 {
                return;
            }
            continue;
        }
        if peer_allowed(conn) {
            handle(conn, &mut state);
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(conn) };
    }
}

/// Only our own user (or root) may checkpoint us.
fn peer_allowed(conn: i32) -> bool {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of `len` bytes.
    let ok = unsafe {
        libc::getsockopt(
            conn,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    } == 0;
    // SAFETY: getuid has no preconditions.
    ok && (cred.uid == 0 || cred.uid == unsafe { libc::getuid() })
}

/// Serves requests on one connection until it closes. Lines are read into a buffer on
/// this thread's stack: nothing outside it changes between a reply and the next request.
fn handle(conn: i32, state: &mut State) {
    let mut buf = [0u8; 256];
    let mut len = 0;
    loop {
        // SAFETY: reading into the unused tail of `buf`.
        let n = unsafe { libc::read(conn, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            return;
        }
        len += n as usize;
        while let Some(newline) = buf[..len].iter().position(|&b| b == b'\n') {
            let request = std::str::from_utf8(&buf[..newline])
                .ok()
                .and_then(Request::parse);
            if request == Some(Request::Hello) {
                if !hello(conn, state) {
                    return;
                }
                buf.copy_within(newline + 1..len, 0);
                len -= newline + 1;
                continue;
            }
            let alive = match request {
                Some(Request::Collect(kind)) => collect(conn, state, kind),
                _ => write_all(conn, b"err unknown request\n"),
            };
            if !alive {
                return;
            }
            buf.copy_within(newline + 1..len, 0);
            len -= newline + 1;
        }
        if len == buf.len() {
            return; // a line longer than any request
        }
    }
}

fn write_all(fd: i32, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// A fixed buffer on the stack that `write!` fills.
struct StackText {
    bytes: [u8; 256],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Answers `hello` without touching the heap: a checkpointer may ask between a
/// checkpoint and `msh checkpoint verify`, which must find memory unchanged.
fn hello(conn: i32, state: &mut State) -> bool {
    if let Some(reason) = &state.unavailable {
        state.out = format!(
            "err process {} cannot track dirty pages: {reason}\n",
            state.pid
        );
        return write_all(conn, state.out.as_bytes());
    }
    let mut text = StackText {
        bytes: [0; 256],
        len: 0,
    };
    let written = control::write_hello(
        &mut text,
        state.pid,
        state.tid,
        state.session,
        state.epoch,
        Backend::UffdAsync.name(),
        state.stack,
    );
    written.is_ok() && write_all(conn, &text.bytes[..text.len])
}

/// `spans` minus `holes`, both sorted and disjoint within themselves.
fn subtract(spans: &[(usize, usize)], holes: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for &(start, end) in spans {
        let mut from = start;
        for &(hs, he) in holes {
            if he <= from || hs >= end {
                continue;
            }
            if hs > from {
                out.push((from, hs));
            }
            from = from.max(he);
        }
        if from < end {
            out.push((from, end));
        }
    }
    out
}

/// Appends `[start, end)` to sorted `spans`, merging it with an adjacent last span.
fn push_span(spans: &mut Vec<(usize, usize)>, start: usize, end: usize) {
    match spans.last_mut() {
        Some(last) if last.1 == start => last.1 = end,
        _ => spans.push((start, end)),
    }
}

/// Answers `collect` (the process's other threads are stopped). Returns whether the
/// connection is still usable.
///
/// Phase A may allocate: it rescans the mappings, starts and drops trackers, sends the
/// regions and notes every run it must report whole. Phase B then collects and re-arms the
/// tracked pieces and writes nothing but the stack, the stash, the copy buffer and the
/// trackers' own output vectors, whose pages it reports too: so every page the control
/// thread wrote since the last re-arm is in the reply. Its copy (when it makes one)
/// takes the dirty runs, then phase A's whole runs, then the output vectors' pages, so
/// each is copied after its last write; the run lines go out in the same order.
fn collect(conn: i32, state: &mut State, kind: CollectKind) -> bool {
    let header = match phase_a(state, kind) {
        Ok(()) => write_all(conn, state.out.as_bytes()),
        Err(message) => {
            state.out.clear();
            state.out.push_str("err ");
            state.out.push_str(&message);
            state.out.push('\n');
            return write_all(conn, state.out.as_bytes());
        }
    };
    if !header {
        return false;
    }
    let mut w = StackWriter {
        fd: conn,
        bytes: [0; 4096],
        len: 0,
        ok: true,
    };
    let page = msh_core::os::page_size();
    state.copy.start(kind != CollectKind::Full);
    if kind != CollectKind::Full {
        let (stash, copy, failed) = (&mut state.stash, &mut state.copy, &mut state.failed);
        for (index, piece) in state.pieces.iter_mut().enumerate() {
            let Some(tracker) = piece.tracker.as_mut() else {
                continue;
            };
            let collected = tracker.collect(0, Limit::NONE, true, &mut |run| {
                let _ = control::write_run(&mut w, run.start, run.pages);
                stash.push((run.start, run.pages));
                copy.append(run.start, run.pages, page);
            });
            if collected.is_err() {
                // Replaced under us: report it whole now; phase A drops it next time.
                let whole = (piece.start, (piece.end - piece.start) / page);
                let _ = control::write_run(&mut w, whole.0, whole.1);
                stash.push(whole);
                copy.append(whole.0, whole.1, page);
                if let Some(word) = failed.get_mut(index / 64) {
                    *word |= 1 << (index % 64);
                }
            }
        }
    }
    // Phase A's whole runs, now that its frees are done.
    for &(start, pages) in &state.whole {
        let _ = control::write_run(&mut w, start, pages);
        state.copy.append(start, pages, page);
    }
    if kind != CollectKind::Full {
        // Last: the pages the trackers' own output vectors are in, as they are now.
        for piece in &state.pieces {
            if let Some((at, len)) = piece.tracker.as_ref().and_then(Tracker::scratch) {
                // Page by page: the vector may straddle two pieces.
                let mut first = at & !(page - 1);
                while first < at + len {
                    if state
                        .pieces
                        .iter()
                        .any(|p| p.start <= first && first + page <= p.end)
                    {
                        let _ = control::write_run(&mut w, first, 1);
                        state.copy.append(first, 1, page);
                    }
                    first += page;
                }
            }
        }
    }
    if state.copy.off {
        let _ = std::fmt::Write::write_str(&mut w, control::END);
    } else {
        let copied = control::Copied {
            fd: state.copy.fd,
            bytes: state.copy.used as u64,
        };
        let _ = control::write_end_copied(&mut w, copied);
    }
    w.flush();
    w.ok
}

fn phase_a(state: &mut State, kind: CollectKind) -> Result<(), String> {
    if let Some(reason) = &state.unavailable {
        return Err(format!(
            "process {} cannot track dirty pages: {reason}",
            state.pid
        ));
    }
    let page = msh_core::os::page_size();
    // What the previous collect reported, for a retry.
    let retry_everything = kind == CollectKind::Retry && state.stash.everything;
    let previous: Vec<(usize, usize)> = if kind == CollectKind::Retry {
        state.stash.as_slice().to_vec()
    } else {
        Vec::new()
    };
    let whole_everything = kind == CollectKind::Full || retry_everything;
    let maps = dirty::current_mappings().map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    let mut excluded = [state.stack, state.stash.range()];
    excluded.sort_unstable();
    let (mut anon, mut file) = (Vec::new(), Vec::new());
    for m in maps
        .iter()
        .filter(|m| m.readable && m.writable && !m.shared)
    {
        for (start, end) in subtract(&[(m.start, m.end)], &excluded) {
            push_span(if m.inode == 0 { &mut anon } else { &mut file }, start, end);
        }
    }
    let mut whole: Vec<(usize, usize)> = Vec::new();
    let mut kept: Vec<Piece> = Vec::new();
    let failed = std::mem::replace(&mut state.failed, [0; 64]);
    for (index, mut piece) in std::mem::take(&mut state.pieces).into_iter().enumerate() {
        if !anon
            .iter()
            .any(|&(s, e)| s <= piece.start && piece.end <= e)
        {
            continue; // unmapped, or cut: what is left is new below
        }
        // A tracker whose range was replaced under it is dropped: the range is new.
        let replaced = failed
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0);
        let usable = !replaced
            && match piece.tracker.as_mut() {
                Some(t) if kind == CollectKind::Full => t.reset().is_ok(),
                _ => true,
            };
        if usable {
            kept.push(piece);
        }
    }
    let mut known: Vec<(usize, usize)> = kept.iter().map(|p| (p.start, p.end)).collect();
    known.sort_unstable();
    for (start, end) in subtract(&anon, &known) {
        let tracker = Tracker::new(&[(start, end - start)], Choice::Only(Backend::UffdAsync)).ok();
        whole.push((start, (end - start) / page)); // never tracked: all of it
        kept.push(Piece {
            start,
            end,
            tracker,
        });
    }
    kept.sort_unstable_by_key(|p| p.start);
    for p in &kept {
        if p.tracker.is_none() || whole_everything {
            whole.push((p.start, (p.end - p.start) / page));
        }
    }
    for &(start, end) in &file {
        whole.push((start, (end - start) / page));
    }
    for (start, pages) in previous {
        // Only what is still in a region: the rest no longer exists.
        let end = start + pages * page;
        if kept.iter().any(|p| p.start <= start && end <= p.end) {
            whole.push((start, pages));
        }
    }
    control::normalize_runs(&mut whole, page);
    let mut regions: Vec<Region> = kept
        .iter()
        .map(|p| Region {
            start: p.start,
            end: p.end,
            tracked: p.tracker.is_some(),
        })
        .chain(file.iter().map(|&(start, end)| Region {
            start,
            end,
            tracked: false,
        }))
        .collect();
    regions.sort_unstable_by_key(|r| r.start);
    state.pieces = kept;
    state.epoch += 1;
    state.stash.len = 0;
    state.stash.everything = kind == CollectKind::Full;
    state.out.clear();
    let _ = control::write_collect_header(&mut state.out, regions.len(), state.epoch);
    for region in &regions {
        let _ = control::write_region(&mut state.out, region);
    }
    for &run in &whole {
        state.stash.push(run);
    }
    // Kept for the copy, which comes after this function's frees.
    state.whole.clear();
    state.whole.extend_from_slice(&whole);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_cuts_holes() {
        let spans = [(0, 100), (200, 300)];
        assert_eq!(
            subtract(&spans, &[(10, 20), (90, 210)]),
            vec![(0, 10), (20, 90), (210, 300)]
        );
        assert_eq!(subtract(&spans, &[]), spans.to_vec());
        assert_eq!(subtract(&spans, &[(0, 300)]), vec![]);
    }

    #[test]
    fn spans_merge_when_adjacent() {
        let mut spans = Vec::new();
        push_span(&mut spans, 0, 10);
        push_span(&mut spans, 10, 20);
        push_span(&mut spans, 30, 40);
        assert_eq!(spans, vec![(0, 20), (30, 40)]);
    }
}

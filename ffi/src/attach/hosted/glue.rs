//! What a hosted program's imports are bound to instead of the C library's, so that
//! it can share the primary's process:
//!
//! - `__libc_start_main`: `_start` calls it; here it runs the init arrays and then
//!   `main(argc, argv, environ)` on the scavenger's stack, and ends like `exit`.
//! - `exit`, `atexit`, `__cxa_atexit`, `on_exit`: the program's exit handlers are
//!   its own list, run when it exits or returns from `main`; then its streams are
//!   closed and libmsh's `exit` ends the scavenger (not the process).
//! - I/O calls (`read`, `write`, `fread`, `fwrite`, ...): the real call, then a
//!   yield (also the one-character ones: `getc`, `putc`, ...); `printf`, `fprintf`
//!   (and `_chk` forms): a yield, then the call. An unmodified program never calls `msh_yield`; these are its yield
//!   points, so the primary may wait as long as the program runs between two I/O
//!   calls.
//! - `getopt*`: run with the program's `optind`/`opterr`/`optopt`/`optarg` swapped
//!   into the C library's live variables for the length of the call, so the two
//!   never see each other's parsing state (see `Getopt`).
//! - `signal`, `sigaction`, `sigprocmask`, `pthread_sigmask`: queries answer,
//!   changes are dropped: handlers the program would install are the primary's
//!   business (gzip's clean-up on Ctrl-C does not happen).
//! - `fopen`, `fdopen`, `fclose`: streams it opens are tracked and closed when it
//!   exits, as the process's exit would have.
//!
//! The wrappers find the program they serve through `CURRENT`, a thread-local set
//! when the program starts and again every time it resumes after a yield (a
//! scavenger may resume on another thread): the wrappers' yields are its only
//! switch points.

use super::Program;
use crate::attach::interpose::real;
use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::AtomicUsize;
use std::cell::Cell;

thread_local! {
    static CURRENT: Cell<*const Program> = const { Cell::new(core::ptr::null()) };
}

/// Makes `program` the one the wrappers on this thread serve.
pub fn enter(program: *const Program) {
    CURRENT.with(|c| c.set(program));
}

/// The running hosted program. Only ever called from its own imports.
fn current() -> &'static Program {
    let program = CURRENT.with(Cell::get);
    if program.is_null() {
        // A wrapper called on a thread that never ran a hosted program (only if
        // the program handed one to another thread as a function pointer).
        let message = b"msh: a hosted program's exit or stream call ran outside it: aborting\n";
        // SAFETY: write(2) of a valid buffer, then abort(3).
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::abort()
        }
    }
    // SAFETY: programs are leaked at load and never freed.
    unsafe { &*program }
}

/// A yield point: switches back to the primary, then says which program runs again
/// here.
fn yield_point() {
    let me = CURRENT.with(Cell::get);
    if me.is_null() || !msh_core::sched::in_scavenger() {
        return; // called outside the program's scavenger: nothing to yield
    }
    // SAFETY: errno is this thread's; the yield may resume us on another thread,
    // whose errno then gets the value the program last saw.
    let errno = unsafe { *libc::__errno_location() };
    let ctx = msh_core::arch::thread_ctx();
    if !ctx.is_null() {
        // SAFETY: this thread's context block, which only this thread touches.
        // Back to the primary now: a program's I/O call is far past any budget, and
        // counting it as one yield of a fast scavenger would hold the primary for
        // a whole quota of I/O calls. The run says nothing about the time per
        // yield, so it is no sample of it.
        unsafe {
            msh_core::budget::cancel_sample(&mut *ctx);
            (*ctx).quota = 1;
        }
    }
    // SAFETY: `me` is the running program (set at its start and on every resume).
    let program = unsafe { &*me };
    program.state().gaps.record();
    msh_core::arch::yield_now();
    enter(me);
    program.state().gaps.resume();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// A wrapper that calls the real function, then yields.
macro_rules! yielding {
    ($name:ident, $sym:literal, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            static REAL: AtomicUsize = AtomicUsize::new(0);
            // SAFETY: the C library's function of that name has this signature.
            let result = unsafe {
                core::mem::transmute::<usize, unsafe extern "C" fn($($ty),*) -> $ret>(
                    real(&REAL, $sym),
                )($($arg),*)
            };
            yield_point();
            result
        }
    };
}

type File = *mut libc::FILE;
yielding!(read, c"read", (fd: c_int, buf: *mut c_void, n: usize) -> isize);
yielding!(write, c"write", (fd: c_int, buf: *const c_void, n: usize) -> isize);
yielding!(pread, c"pread64", (fd: c_int, buf: *mut c_void, n: usize, at: i64) -> isize);
yielding!(pwrite, c"pwrite64", (fd: c_int, buf: *const c_void, n: usize, at: i64) -> isize);
yielding!(readv, c"readv", (fd: c_int, iov: *const libc::iovec, n: c_int) -> isize);
yielding!(writev, c"writev", (fd: c_int, iov: *const libc::iovec, n: c_int) -> isize);
yielding!(fread, c"fread", (buf: *mut c_void, size: usize, n: usize, f: File) -> usize);
yielding!(fwrite, c"fwrite", (buf: *const c_void, size: usize, n: usize, f: File) -> usize);
yielding!(fgets, c"fgets", (buf: *mut c_char, n: c_int, f: File) -> *mut c_char);
yielding!(fputs, c"fputs", (s: *const c_char, f: File) -> c_int);
yielding!(puts, c"puts", (s: *const c_char) -> c_int);
yielding!(fputc, c"fputc", (c: c_int, f: File) -> c_int);
yielding!(putchar, c"putchar", (c: c_int) -> c_int);
yielding!(fgetc, c"fgetc", (f: File) -> c_int);
yielding!(getchar, c"getchar", () -> c_int);

/// For functions with variable arguments (the `printf` family), which Rust cannot
/// define: a stub that saves the argument registers (`%rax` counts the vector ones),
/// yields through [`yield_then_real`], restores them and jumps to the real function
/// with the caller's frame intact. The yield comes before the call, not after.
macro_rules! yield_first {
    ($stub:ident, $cache:ident, $name:ident, $sym:literal) => {
        static $cache: AtomicUsize = AtomicUsize::new(0);
        static $name: [u8; $sym.len()] = *$sym;
        extern "C" {
            fn $stub();
        }
        core::arch::global_asm!(
            concat!(".pushsection .text.", stringify!($stub), ",\"ax\",@progbits"),
            concat!(".type ", stringify!($stub), ",@function"),
            concat!(stringify!($stub), ":"),
            "push rbp",
            "mov rbp, rsp",
            "push rdi",
            "push rsi",
            "push rdx",
            "push rcx",
            "push r8",
            "push r9",
            "push rax",
            "push rax",
            "sub rsp, 128",
            "movdqu [rsp], xmm0",
            "movdqu [rsp + 16], xmm1",
            "movdqu [rsp + 32], xmm2",
            "movdqu [rsp + 48], xmm3",
            "movdqu [rsp + 64], xmm4",
            "movdqu [rsp + 80], xmm5",
            "movdqu [rsp + 96], xmm6",
            "movdqu [rsp + 112], xmm7",
            "lea rdi, [rip + {cache}]",
            "lea rsi, [rip + {name}]",
            "call {then}",
            "mov r11, rax",
            "movdqu xmm0, [rsp]",
            "movdqu xmm1, [rsp + 16]",
            "movdqu xmm2, [rsp + 32]",
            "movdqu xmm3, [rsp + 48]",
            "movdqu xmm4, [rsp + 64]",
            "movdqu xmm5, [rsp + 80]",
            "movdqu xmm6, [rsp + 96]",
            "movdqu xmm7, [rsp + 112]",
            "add rsp, 128",
            "pop rax",
            "pop rax",
            "pop r9",
            "pop r8",
            "pop rcx",
            "pop rdx",
            "pop rsi",
            "pop rdi",
            "pop rbp",
            "jmp r11",
            concat!(".size ", stringify!($stub), ", . - ", stringify!($stub)),
            ".popsection",
            cache = sym $cache,
            name = sym $name,
            then = sym yield_then_real,
        );
    };
}

/// The stubs' yield: yields, then gives the real function's address.
extern "C" fn yield_then_real(cache: &AtomicUsize, name: *const c_char) -> usize {
    yield_point();
    // SAFETY: `name` is one of the stubs' static NUL-terminated names.
    real(cache, unsafe { core::ffi::CStr::from_ptr(name) })
}

yield_first!(msh_hosted_printf, REAL_PRINTF, NAME_PRINTF, b"printf\0");
yield_first!(msh_hosted_fprintf, REAL_FPRINTF, NAME_FPRINTF, b"fprintf\0");
yield_first!(
    msh_hosted_printf_chk,
    REAL_PRINTF_CHK,
    NAME_PRINTF_CHK,
    b"__printf_chk\0"
);
yield_first!(
    msh_hosted_fprintf_chk,
    REAL_FPRINTF_CHK,
    NAME_FPRINTF_CHK,
    b"__fprintf_chk\0"
);

/// The CPU time a program runs between two of its yields: what the primary waits
/// (`MSH_STATS=1` prints it when the program ends).
#[derive(Default)]
pub struct Gaps {
    resumed_ns: u64,
    /// Yields so far.
    pub yields: u64,
    /// The longest run between two yields (or from the start), ns of CPU time.
    pub longest_ns: u64,
}

fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out-pointer (a vDSO call).
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

impl Gaps {
    /// The program runs again (on this thread).
    pub fn resume(&mut self) {
        self.resumed_ns = thread_cpu_ns();
    }

    /// The program yields (or ends): one run is over.
    pub fn record(&mut self) {
        self.yields += 1;
        self.longest_ns = self
            .longest_ns
            .max(thread_cpu_ns().saturating_sub(self.resumed_ns));
    }
}

/// An exit handler the program registered.
#[derive(Clone, Copy)]
pub enum Handler {
    /// `atexit(f)`.
    Plain(extern "C" fn()),
    /// `__cxa_atexit(f, arg, dso)`.
    WithArg(extern "C" fn(*mut c_void), *mut c_void),
    /// `on_exit(f, arg)`.
    OnExit(extern "C" fn(c_int, *mut c_void), *mut c_void),
}

unsafe extern "C" fn atexit(f: extern "C" fn()) -> c_int {
    current().state().handlers.push(Handler::Plain(f));
    0
}

unsafe extern "C" fn cxa_atexit(
    f: extern "C" fn(*mut c_void),
    arg: *mut c_void,
    _dso: *mut c_void,
) -> c_int {
    current().state().handlers.push(Handler::WithArg(f, arg));
    0
}

unsafe extern "C" fn on_exit(f: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int {
    current().state().handlers.push(Handler::OnExit(f, arg));
    0
}

unsafe extern "C" fn exit(status: c_int) -> ! {
    current().finish(status)
}

type Main = unsafe extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
type Init = unsafe extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char);

/// `__libc_start_main` as `_start` calls it: (main, argc, argv, init, fini,
/// rtld_fini, stack_end). Programs linked against glibc < 2.34 pass their
/// `__libc_csu_init`/`__libc_csu_fini`, which run the arrays themselves.
unsafe extern "C" fn start_main(
    main: Main,
    argc: c_int,
    argv: *mut *mut c_char,
    init: Option<Init>,
    fini: Option<extern "C" fn()>,
) -> c_int {
    let program = current();
    program.state().gaps.resume();
    // SAFETY: `environ` is the process's environment, which the program shares.
    let envp = unsafe { *environ() };
    program.state().fini = fini;
    // SAFETY: the program's own init code and main, called as glibc would.
    unsafe {
        match init {
            Some(init) => init(argc, argv, envp),
            None => program.run_init(argc, argv, envp),
        }
        let status = main(argc, argv, envp);
        program.finish(status)
    }
}

fn environ() -> *mut *mut *mut c_char {
    extern "C" {
        static mut environ: *mut *mut c_char;
    }
    &raw mut environ
}

/// The C library's getopt variables and the program's copies of them.
pub struct Getopt {
    /// The program's `optind`, `opterr`, `optopt` (its COPY'd variables, or
    /// `own` when it does not reference them).
    pub ints: [*mut c_int; 3],
    /// The program's `optarg`.
    pub optarg: *mut *mut c_char,
    /// Storage for the variables the program does not reference.
    pub own: Box<([c_int; 3], *mut c_char)>,
    /// No getopt call yet: the first one resets the C library's parser.
    pub fresh: bool,
}

impl Getopt {
    /// The program's getopt state, starting as a new process's does.
    pub fn new() -> Getopt {
        let mut own = Box::new(([1, 1, b'?' as c_int], core::ptr::null_mut()));
        let ints = [&mut own.0[0] as *mut c_int, &mut own.0[1], &mut own.0[2]];
        let optarg = &mut own.1 as *mut *mut c_char;
        Getopt {
            ints,
            optarg,
            own,
            fresh: true,
        }
    }

    /// Uses the program's COPY'd variable `name` at `at` (initialised as a new
    /// process's); false when `name` is not a getopt variable.
    pub fn adopt(&mut self, name: &str, at: *mut u8) -> bool {
        let index = match name {
            "optind" => 0,
            "opterr" => 1,
            "optopt" => 2,
            "optarg" => {
                self.optarg = at.cast();
                // SAFETY: the program's variable, of optarg's type.
                unsafe { self.optarg.write(core::ptr::null_mut()) };
                return true;
            }
            _ => return false,
        };
        self.ints[index] = at.cast();
        // SAFETY: the program's variable, of that int's type.
        unsafe { self.ints[index].write(self.own.0[index]) };
        true
    }
}

/// The live getopt variables: the ones the C library's getopt uses (the main
/// program's copies when it has them, which `RTLD_DEFAULT` finds first).
fn live_getopt() -> Option<([*mut c_int; 3], *mut *mut c_char)> {
    let find = |name: &core::ffi::CStr| {
        // SAFETY: dlsym with a NUL-terminated name.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
    };
    let ints = [find(c"optind"), find(c"opterr"), find(c"optopt")];
    let optarg = find(c"optarg");
    if ints.iter().any(|p| p.is_null()) || optarg.is_null() {
        return None;
    }
    Some((ints.map(|p| p.cast()), optarg.cast()))
}

/// Runs a getopt call with the program's variables in the C library's.
fn with_getopt(call: impl FnOnce() -> c_int) -> c_int {
    let program = current();
    let Some((live, live_arg)) = live_getopt() else {
        return call();
    };
    let ours = &mut program.state().getopt;
    // SAFETY: all are valid variables of these types (the C library's, the
    // program's copies, or `own`); no yield happens inside getopt.
    unsafe {
        let saved = (live.map(|p| *p), *live_arg);
        for (l, o) in live.iter().zip(ours.ints) {
            **l = *o;
        }
        *live_arg = *ours.optarg;
        if ours.fresh && *live[0] == 1 {
            // optind 0 makes glibc forget the primary's parsing state.
            *live[0] = 0;
        }
        ours.fresh = false;
        let result = call();
        for (l, o) in live.iter().zip(ours.ints) {
            *o = **l;
        }
        *ours.optarg = *live_arg;
        for (l, v) in live.iter().zip(saved.0) {
            **l = v;
        }
        *live_arg = saved.1;
        result
    }
}

type LongOption = c_void;

unsafe extern "C" fn getopt(argc: c_int, argv: *const *mut c_char, opts: *const c_char) -> c_int {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    // SAFETY: glibc's getopt has this signature.
    with_getopt(|| unsafe {
        core::mem::transmute::<
            usize,
            unsafe extern "C" fn(c_int, *const *mut c_char, *const c_char) -> c_int,
        >(real(&REAL, c"getopt"))(argc, argv, opts)
    })
}

macro_rules! getopt_long {
    ($name:ident, $sym:literal) => {
        unsafe extern "C" fn $name(
            argc: c_int,
            argv: *const *mut c_char,
            opts: *const c_char,
            long: *const LongOption,
            index: *mut c_int,
        ) -> c_int {
            static REAL: AtomicUsize = AtomicUsize::new(0);
            type F = unsafe extern "C" fn(
                c_int,
                *const *mut c_char,
                *const c_char,
                *const LongOption,
                *mut c_int,
            ) -> c_int;
            // SAFETY: glibc's function of that name has this signature.
            with_getopt(|| unsafe {
                core::mem::transmute::<usize, F>(real(&REAL, $sym))(argc, argv, opts, long, index)
            })
        }
    };
}
getopt_long!(getopt_long, c"getopt_long");
getopt_long!(getopt_long_only, c"getopt_long_only");

/// `signal` and its aliases: says what the disposition is, changes nothing.
unsafe extern "C" fn signal(sig: c_int, _handler: libc::sighandler_t) -> libc::sighandler_t {
    let mut old = core::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a query (no new action) with a valid out-pointer.
    if unsafe { libc::sigaction(sig, core::ptr::null(), old.as_mut_ptr()) } != 0 {
        return libc::SIG_ERR;
    }
    // SAFETY: filled by sigaction.
    unsafe { old.assume_init().sa_sigaction }
}

unsafe extern "C" fn sigaction(
    sig: c_int,
    _act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // SAFETY: a query only; `old` is the caller's (NULL allowed).
    unsafe { libc::sigaction(sig, core::ptr::null(), old) }
}

unsafe extern "C" fn sigprocmask(
    _how: c_int,
    _set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: a query only; `old` is the caller's (NULL allowed).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), old) }
}

unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: as sigprocmask; pthread_sigmask returns the error instead of -1.
    if unsafe { sigprocmask(how, set, old) } == 0 {
        0
    } else {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() }
    }
}

unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> File {
    // SAFETY: the caller's arguments, as fopen(3) takes them.
    track(unsafe { libc::fopen(path, mode) })
}

unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> File {
    // SAFETY: the caller's arguments, as fdopen(3) takes them.
    track(unsafe { libc::fdopen(fd, mode) })
}

unsafe extern "C" fn fclose(file: File) -> c_int {
    current().state().files.retain(|&f| f != file);
    // SAFETY: the caller's stream.
    unsafe { libc::fclose(file) }
}

fn track(file: File) -> File {
    if !file.is_null() {
        current().state().files.push(file);
    }
    file
}

/// The address a hosted program's import `name` binds to instead of the C
/// library's, if any.
pub fn replacement(name: &str) -> Option<usize> {
    let address = match name {
        "__libc_start_main" => start_main as *const () as usize,
        "exit" => exit as *const () as usize,
        "atexit" => atexit as *const () as usize,
        "__cxa_atexit" => cxa_atexit as *const () as usize,
        "on_exit" => on_exit as *const () as usize,
        "read" => read as *const () as usize,
        "write" => write as *const () as usize,
        "pread" | "pread64" => pread as *const () as usize,
        "pwrite" | "pwrite64" => pwrite as *const () as usize,
        "readv" => readv as *const () as usize,
        "writev" => writev as *const () as usize,
        "fread" | "fread_unlocked" => fread as *const () as usize,
        "fwrite" | "fwrite_unlocked" => fwrite as *const () as usize,
        "fgets" | "fgets_unlocked" => fgets as *const () as usize,
        "fputs" | "fputs_unlocked" => fputs as *const () as usize,
        "puts" => puts as *const () as usize,
        "fputc" | "putc" | "fputc_unlocked" | "putc_unlocked" => fputc as *const () as usize,
        "putchar" | "putchar_unlocked" => putchar as *const () as usize,
        "fgetc" | "getc" | "fgetc_unlocked" | "getc_unlocked" => fgetc as *const () as usize,
        "getchar" | "getchar_unlocked" => getchar as *const () as usize,
        "printf" => msh_hosted_printf as *const () as usize,
        "fprintf" => msh_hosted_fprintf as *const () as usize,
        "__printf_chk" => msh_hosted_printf_chk as *const () as usize,
        "__fprintf_chk" => msh_hosted_fprintf_chk as *const () as usize,
        "getopt" => getopt as *const () as usize,
        "getopt_long" => getopt_long as *const () as usize,
        "getopt_long_only" => getopt_long_only as *const () as usize,
        "signal" | "bsd_signal" | "sysv_signal" | "sigset" => signal as *const () as usize,
        "sigaction" => sigaction as *const () as usize,
        "sigprocmask" => sigprocmask as *const () as usize,
        "pthread_sigmask" => pthread_sigmask as *const () as usize,
        "fopen" | "fopen64" => fopen as *const () as usize,
        "fdopen" => fdopen as *const () as usize,
        "fclose" => fclose as *const () as usize,
        _ => return None,
    };
    Some(address)
}

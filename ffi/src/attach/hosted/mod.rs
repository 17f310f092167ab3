//! Ordinary programs as scavengers: a pool line whose path is a dynamically linked
//! PIE executable (`/usr/bin/gzip -k -9 FILE`) runs it, unmodified, inside the
//! primary's process.
//!
//! glibc's `dlopen` refuses PIE executables, so this is a small loader of its own
//! (`image`): the file's PT_LOAD segments are copied into a private mapping (each
//! pool line its own globals), its relocations applied, its imports bound to the
//! process's libraries — by name through `RTLD_DEFAULT` (what the primary sees,
//! libmsh's `exit` included), then its DT_NEEDED libraries, dlopen'ed — except the
//! few `glue` replaces so the program can share the process (its exit, its getopt
//! state, its signal handlers, its yield points).
//!
//! At its first run, the scavenger builds on its own stack what the kernel gives a
//! new process (`argc`, `argv`, an empty `envp` and auxv) and jumps to the program's
//! `_start`, which calls `__libc_start_main` — `glue`'s: the init arrays, then
//! `main(argc, argv, environ)`, then exit handlers and the end of the scavenger.
//!
//! Copy-relocated C library variables (`stdout`, `optind`, `program_invocation_name`,
//! ...) are the program's own copies: `stdin`/`stdout`/`stderr` are streams of its own
//! on duplicates of descriptors 0, 1 and 2 (so its `fclose(stdout)` closes neither
//! the primary's stream nor its descriptor), the getopt variables are swapped into
//! the C library's for the length of each getopt call (`glue::Getopt`), the rest
//! start as copies of the library's values. C library functions that use those
//! variables themselves (`printf`, `perror`, `error`) still use the primary's.
//!
//! Refused, with one line naming the reason, and the primary runs on: static and
//! non-PIE executables, thread-local storage of their own (PT_TLS: the thread's TLS
//! block has no room for it), and imports of threads, fork/exec or signal machinery
//! that cannot be neutralised (`elf::REFUSED`).

mod elf;
mod glue;
mod image;

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_void};
use std::ffi::CString;

pub use elf::Kind;

/// Whether the file at `path` is a program (hosted here) or a shared object; None
/// when it cannot be read or is not ELF (the shared-object path reports why).
pub fn probe(path: &str) -> Option<(Kind, Vec<u8>)> {
    let data = msh_files::read_regular(std::path::Path::new(path), "scavenger", 1 << 30).ok()?;
    elf::kind(&data).map(|kind| (kind, data))
}

/// What a hosted program changes as it runs.
struct State {
    handlers: Vec<glue::Handler>,
    /// `fini` passed by a pre-2.34 `_start`.
    fini: Option<extern "C" fn()>,
    getopt: glue::Getopt,
    /// Streams it opened and its own stdin/stdout/stderr: closed at its exit.
    files: Vec<*mut libc::FILE>,
    finished: bool,
    gaps: glue::Gaps,
}

/// A loaded executable, ready to run once. Lives for the rest of the process.
pub struct Program {
    image: image::Image,
    exe: elf::Exe,
    /// What `_start` finds on its stack: argc, argv..., NULL, NULL (envp), AT_NULL.
    start_stack: Vec<usize>,
    /// Owns the argument strings `start_stack` points into.
    args: Vec<CString>,
    /// The executable segment: the scavenger's own code.
    pub text: (usize, usize),
    state: UnsafeCell<State>,
}

/// Loads `data` (the file at `argv[0]`) as a hosted program. Runs none of its code
/// except IFUNC resolvers.
pub fn load(argv: &[String], data: &[u8]) -> Result<Program, String> {
    let exe = elf::read(data).map_err(|why| format!("cannot run it as a scavenger: {why}"))?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| format!("argument {a:?} contains a NUL byte"))
        })
        .collect::<Result<_, _>>()?;
    let mut start_stack = vec![args.len()];
    start_stack.extend(args.iter().map(|a| a.as_ptr() as usize));
    start_stack.extend([0, 0, 0, 0]);
    let libraries = open_needed(&exe)?;
    let image = image::Image::map(&exe, data)?;
    let mut getopt = glue::Getopt::new();
    let mut files = Vec::new();
    let mut lookup = |index: usize| -> Result<usize, String> {
        let Some(symbol) = exe.symbols.get(index) else {
            return Err("malformed ELF: a relocation names no symbol".into());
        };
        if let Some(value) = symbol.defined {
            return Ok(image.base + value as usize);
        }
        if let Some(address) = glue::replacement(&symbol.name) {
            return Ok(address);
        }
        match find(&symbol.name, symbol.version.as_deref(), &libraries) {
            Some(address) => Ok(address),
            None if symbol.weak => Ok(0),
            None => Err(format!(
                "it needs {}, which none of its libraries defines",
                symbol.name
            )),
        }
    };
    image.relocate(&exe, &mut lookup)?;
    // Copies that must not start as the library's values.
    for r in exe
        .relocs
        .iter()
        .filter(|r| r.kind == object::elf::R_X86_64_COPY)
    {
        let name = exe.symbols[r.sym].name.as_str();
        let at = image.at(r.offset);
        if getopt.adopt(name, at) {
            continue;
        }
        let value = match name {
            "stdin" => own_stream(0, c"r").cast(),
            "stdout" => own_stream(1, c"w").cast(),
            "stderr" => {
                let err = own_stream(2, c"w");
                if !err.is_null() {
                    // SAFETY: a stream we just opened, before any I/O on it.
                    unsafe { libc::setvbuf(err, core::ptr::null_mut(), libc::_IONBF, 0) };
                }
                err.cast()
            }
            "program_invocation_name" => args[0].as_ptr() as *mut c_void,
            "program_invocation_short_name" | "__progname" => {
                let path = args[0].to_bytes();
                let short = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
                // SAFETY: within args[0], which the program owns.
                unsafe { args[0].as_ptr().add(short) as *mut c_void }
            }
            _ => continue,
        };
        if matches!(name, "stdin" | "stdout" | "stderr") && !value.is_null() {
            files.push(value.cast::<libc::FILE>());
        }
        // SAFETY: the program's copy of a pointer variable, in the writable image.
        unsafe { at.cast::<*mut c_void>().write_unaligned(value) };
    }
    image.protect(&exe)?;
    let text = image.text(&exe);
    Ok(Program {
        image,
        exe,
        start_stack,
        args,
        text,
        state: UnsafeCell::new(State {
            handlers: Vec::new(),
            fini: None,
            getopt,
            files,
            finished: false,
            gaps: glue::Gaps::default(),
        }),
    })
}

/// dlopens the program's DT_NEEDED libraries (most are loaded already).
fn open_needed(exe: &elf::Exe) -> Result<Vec<*mut c_void>, String> {
    exe.needed
        .iter()
        .map(|name| {
            let c_name = CString::new(name.as_str()).map_err(|_| "malformed DT_NEEDED")?;
            // SAFETY: dlopen with a valid name; the handle is kept for the process.
            let handle =
                unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if handle.is_null() {
                Err(format!("it needs {name}, which cannot be loaded"))
            } else {
                Ok(handle)
            }
        })
        .collect()
}

/// A symbol's address: as the primary's imports would bind (`RTLD_DEFAULT`), or in
/// the program's own libraries. When the program names a version, that version from
/// the same library (an old `memcpy@GLIBC_2.2.5` is not today's `memcpy`); an
/// unversioned interposer found first (libmsh's `_exit`, another preloaded
/// library's) wins, as it does for ld.so (`dlvsym` alone would skip it).
fn find(name: &str, version: Option<&str>, libraries: &[*mut c_void]) -> Option<usize> {
    let c_name = CString::new(name).ok()?;
    let (handle, default) = core::iter::once(libc::RTLD_DEFAULT)
        .chain(libraries.iter().copied())
        // SAFETY: dlsym on live handles with a NUL-terminated name.
        .map(|handle| (handle, unsafe { libc::dlsym(handle, c_name.as_ptr()) }))
        .find(|(_, address)| !address.is_null())?;
    let versioned = version.and_then(|v| {
        let c_version = CString::new(v).ok()?;
        // SAFETY: dlvsym on a live handle with NUL-terminated strings.
        let address = unsafe { libc::dlvsym(handle, c_name.as_ptr(), c_version.as_ptr()) };
        (!address.is_null() && object_of(address) == object_of(default)).then_some(address)
    });
    Some(versioned.unwrap_or(default) as usize)
}

/// The load address of the object holding `address`.
fn object_of(address: *mut c_void) -> usize {
    let mut info = core::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr with a valid out-pointer; zeroed when it finds nothing.
    unsafe {
        libc::dladdr(address, info.as_mut_ptr());
        info.assume_init().dli_fbase as usize
    }
}

/// A stream of the program's own on a duplicate of `fd`; NULL when `fd` is closed
/// (the program then sees a NULL stream, as a process started without it would
/// see a failing one).
fn own_stream(fd: c_int, mode: &core::ffi::CStr) -> *mut libc::FILE {
    // SAFETY: fcntl/fdopen on a descriptor we own.
    unsafe {
        let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
        if copy < 0 {
            return core::ptr::null_mut();
        }
        let file = libc::fdopen(copy, mode.as_ptr());
        if file.is_null() {
            libc::close(copy);
        }
        file
    }
}

// SAFETY: a Program's state is touched only by the scavenger running it, which
// runs on one thread at a time.
unsafe impl Send for Program {}
unsafe impl Sync for Program {}

type ArrayFn = unsafe extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char);

impl Program {
    #[allow(clippy::mut_from_ref)]
    fn state(&self) -> &mut State {
        // SAFETY: only the program's own scavenger calls this, one call at a time
        // (no reference is held across a yield).
        unsafe { &mut *self.state.get() }
    }

    /// Runs the program from `_start` on the calling scavenger's stack. Never
    /// returns: the program ends by `exit` (glue's), which ends the scavenger.
    pub fn run(&self) -> ! {
        glue::enter(self);
        let entry = self.image.base + self.exe.entry as usize;
        // SAFETY: builds the kernel's initial stack layout below the current stack
        // pointer (on the scavenger's stack, 16-byte aligned as at a process start)
        // and jumps to `_start` with %rdx = 0 (no rtld_fini) and %rbp = 0 (the
        // outermost frame). Nothing returns here.
        unsafe {
            core::arch::asm!(
                "lea rax, [rcx*8]",
                "sub rsp, rax",
                "and rsp, -16",
                "mov rdi, rsp",
                "rep movsq",
                "xor edx, edx",
                "xor ebp, ebp",
                "jmp r8",
                in("rsi") self.start_stack.as_ptr(),
                in("rcx") self.start_stack.len(),
                in("r8") entry,
                options(noreturn)
            )
        }
    }

    /// The init functions, as glibc runs a program's: preinit array, DT_INIT, init
    /// array.
    ///
    /// # Safety
    /// Runs the program's code; called once, from its `__libc_start_main`.
    unsafe fn run_init(&self, argc: c_int, argv: *mut *mut c_char, envp: *mut *mut c_char) {
        let mut all = self.image.array(self.exe.preinit_array);
        all.extend(self.exe.init.map(|at| self.image.base + at as usize));
        all.extend(self.image.array(self.exe.init_array));
        for f in all {
            // SAFETY: init functions of the program, with glibc's arguments.
            unsafe { core::mem::transmute::<usize, ArrayFn>(f)(argc, argv, envp) };
        }
    }

    /// The end of the program: its exit handlers (last registered first), its fini
    /// functions, its streams closed; then libmsh's `exit` ends the scavenger (a
    /// status other than 0 is reported).
    fn finish(&self, status: c_int) -> ! {
        let first = !core::mem::replace(&mut self.state().finished, true);
        if first {
            self.state().gaps.record();
            if super::SETTINGS.get().is_some_and(|s| s.stats) {
                let gaps = &self.state().gaps;
                eprintln!(
                    "msh: hosted {}: {} yields, longest run between two {:.3} ms of CPU time",
                    self.args[0].to_string_lossy(),
                    gaps.yields,
                    gaps.longest_ns as f64 / 1e6
                );
            }
            while let Some(handler) = self.state().handlers.pop() {
                match handler {
                    glue::Handler::Plain(f) => f(),
                    glue::Handler::WithArg(f, arg) => f(arg),
                    glue::Handler::OnExit(f, arg) => f(status, arg),
                }
            }
            let mut fini: Vec<usize> = self.state().fini.map(|f| f as usize).into_iter().collect();
            if fini.is_empty() {
                fini = self.image.array(self.exe.fini_array);
                fini.reverse();
                fini.extend(self.exe.fini.map(|at| self.image.base + at as usize));
            }
            for f in fini {
                // SAFETY: the program's fini functions, which take no arguments.
                unsafe { core::mem::transmute::<usize, extern "C" fn()>(f)() };
            }
            for file in std::mem::take(&mut self.state().files) {
                // SAFETY: streams the program opened and did not close.
                unsafe { libc::fclose(file) };
            }
        }
        // SAFETY: libmsh's exit, called from the scavenger: it ends the scavenger.
        unsafe { crate::attach::exits::exit(status) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value the program's GOT slot (or COPY'd variable) for `name` holds.
    fn slot(program: &Program, name: &str, kind: u32) -> usize {
        let r = program
            .exe
            .relocs
            .iter()
            .find(|r| r.kind == kind && program.exe.symbols[r.sym].name == name)
            .unwrap_or_else(|| panic!("no relocation for {name}"));
        // SAFETY: a relocated slot in the mapped image.
        unsafe { program.image.at(r.offset).cast::<usize>().read_unaligned() }
    }

    #[test]
    fn gzip_is_mapped_relocated_and_bound_without_running() {
        let Some((Kind::Executable, data)) = probe("/usr/bin/gzip") else {
            return; // not installed
        };
        let argv = ["/usr/bin/gzip".to_string(), "-k".to_string()];
        let program = load(&argv, &data).expect("gzip loads");
        let (start, end) = program.text;
        assert!(
            program.image.base <= start && start < end,
            "{start:x}..{end:x}"
        );
        // Imports glue replaces are bound to it; the others to the C library.
        assert_eq!(
            slot(&program, "read", object::elf::R_X86_64_JUMP_SLOT),
            glue::replacement("read").unwrap()
        );
        let strcmp = find("strcmp", None, &[]).unwrap();
        assert_eq!(
            slot(&program, "strcmp", object::elf::R_X86_64_JUMP_SLOT),
            strcmp
        );
        // Its stdout is a stream of its own, on a duplicate of descriptor 1.
        let stdout = slot(&program, "stdout", object::elf::R_X86_64_COPY) as *mut libc::FILE;
        assert!(!stdout.is_null());
        // SAFETY: a stream the loader opened.
        let fd = unsafe { libc::fileno(stdout) };
        assert!(fd > 2, "fd {fd}");
        // optind starts at 1 whatever the C library's holds.
        assert_eq!(
            slot(&program, "optind", object::elf::R_X86_64_COPY) as u32,
            1
        );
        // _exit is libmsh's (unversioned, preloaded) in a process that has it,
        // whatever version gzip names; here, the C library's.
        assert_eq!(
            slot(&program, "_exit", object::elf::R_X86_64_JUMP_SLOT),
            find("_exit", None, &[]).unwrap()
        );
        // Two loads: two images, each its own globals.
        let again = load(&argv, &data).expect("gzip loads twice");
        assert_ne!(again.image.base, program.image.base);
    }
}

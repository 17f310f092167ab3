//! Loading a scavenger from a shared object. Two conventions are accepted:
//!
//! - msh's: `int msh_scavenger_main(int argc, char **argv)`, and optionally
//!   `int msh_scavenger_init(int argc, char **argv)`, run at load; non-zero rejects
//!   the line.
//! - the MSH prototype's: `int entry(void)` with globals `int argc`, `char **argv`
//!   and `int crt_pos` that the loader fills in, and an optional `void init(void)`.
//!
//! Every line gets its own copy of the object's globals: the first time a path is
//! seen it is dlopen'ed as is; later lines load a private copy from a memfd, which
//! the dynamic loader treats as a different object.

use core::ffi::{c_char, c_int, c_void};
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

type MainFn = unsafe extern "C" fn(c_int, *mut *mut c_char) -> c_int;
type EntryFn = unsafe extern "C" fn() -> c_int;
type InitFn = unsafe extern "C" fn();

enum EntryPoint {
    Msh(MainFn),
    Prototype(EntryFn),
    /// An executable run by `hosted`.
    Hosted(Box<super::hosted::Program>),
}

/// A loaded scavenger, ready to run once. Lives for the rest of the process.
pub struct Loaded {
    entry: EntryPoint,
    /// Address of the entry point: the object holding it is the scavenger's own code.
    pub code: usize,
    /// The scavenger's own code when the dynamic loader does not know it (a hosted
    /// executable): `(start, end)`.
    pub code_range: Option<(usize, usize)>,
    argc: c_int,
    argv: Vec<*mut c_char>,
    /// Owns the argument strings `argv` points into.
    _args: Vec<CString>,
    pub name: CString,
}

// SAFETY: a Loaded is immutable after loading; the scavenger may run on any thread.
unsafe impl Send for Loaded {}
unsafe impl Sync for Loaded {}

/// Loads the scavenger of one pool line. `seen` remembers which paths were loaded
/// already in this process. The object's constructors and init functions run
/// guarded (see `guarded`): one that calls `exit` or `abort` costs its line, not
/// the process.
pub fn load(argv: &[String], seen: &mut HashSet<String>) -> Result<Loaded, String> {
    let path = argv[0].clone();
    if let Some((super::hosted::Kind::Executable, data)) = super::hosted::probe(&path) {
        return load_hosted(argv, &data);
    }
    let first = seen.insert(path.clone());
    let args: Vec<CString> = argv
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| format!("argument {a:?} contains a NUL byte"))
        })
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    argv_ptrs.push(core::ptr::null_mut());
    let argc = args.len() as c_int;
    // The Vec's buffer does not move when the Vec does.
    let argv_addr = argv_ptrs.as_mut_ptr() as usize;
    let guarded_path = path.clone();
    let (entry, code) = super::guarded::run(move || {
        let handle = if first {
            open(&guarded_path)?
        } else {
            open_private_copy(&guarded_path)?
        };
        // SAFETY: argv points into `args`/`argv_ptrs`, alive until `load` returns.
        unsafe { resolve(handle, &guarded_path, argc, argv_addr as *mut *mut c_char) }
    })
    .map_err(|why| format!("{path}: a constructor or init function did not return: {why}"))??;
    let file = path.rsplit('/').next().unwrap_or(&path);
    Ok(Loaded {
        entry,
        code,
        code_range: None,
        argc,
        argv: argv_ptrs,
        _args: args,
        name: CString::new(file).unwrap_or_default(),
    })
}

/// Loads an executable as a hosted program (see `hosted`).
fn load_hosted(argv: &[String], data: &[u8]) -> Result<Loaded, String> {
    let path = &argv[0];
    let program = super::hosted::load(argv, data).map_err(|why| format!("{path}: {why}"))?;
    let file = path.rsplit('/').next().unwrap_or(path);
    Ok(Loaded {
        code: program.text.0,
        code_range: Some(program.text),
        entry: EntryPoint::Hosted(Box::new(program)),
        argc: 0,
        argv: Vec::new(),
        _args: Vec::new(),
        name: CString::new(file).unwrap_or_default(),
    })
}

/// Finds the entry point in `handle` (a function symbol, never data), fills the
/// prototype convention's globals and runs the init functions. Returns the entry
/// point and its address.
///
/// # Safety
/// `argv` is a NULL-terminated array of `argc` strings that outlives the scavenger.
unsafe fn resolve(
    handle: *mut c_void,
    path: &str,
    argc: c_int,
    argv: *mut *mut c_char,
) -> Result<(EntryPoint, usize), String> {
    // SAFETY: symbols are looked up in the object we just loaded and checked to be
    // functions; their types are the documented conventions (a mismatch is the
    // object's author's bug).
    unsafe {
        let (entry, code) = if let Some(main) = function(handle, c"msh_scavenger_main", path)? {
            (
                EntryPoint::Msh(core::mem::transmute::<*mut c_void, MainFn>(main)),
                main as usize,
            )
        } else if let Some(entry) = function(handle, c"entry", path)? {
            let set = |name: &CStr, value: *mut c_void, size: usize| {
                if let Some(global) = symbol(handle, name) {
                    core::ptr::copy_nonoverlapping(
                        &value as *const _ as *const u8,
                        global.cast::<u8>(),
                        size,
                    );
                }
            };
            set(
                c"argc",
                argc as usize as *mut c_void,
                core::mem::size_of::<c_int>(),
            );
            set(c"argv", argv.cast(), core::mem::size_of::<*mut c_void>());
            set(
                c"crt_pos",
                core::ptr::null_mut(),
                core::mem::size_of::<c_int>(),
            );
            if let Some(init) = function(handle, c"init", path)? {
                core::mem::transmute::<*mut c_void, InitFn>(init)();
            }
            (
                EntryPoint::Prototype(core::mem::transmute::<*mut c_void, EntryFn>(entry)),
                entry as usize,
            )
        } else {
            return Err(format!(
                "{path} has no entry point (msh_scavenger_main or entry)"
            ));
        };
        if let Some(init) = function(handle, c"msh_scavenger_init", path)? {
            let status = core::mem::transmute::<*mut c_void, MainFn>(init)(argc, argv);
            if status != 0 {
                return Err(format!(
                    "{path}: msh_scavenger_init failed with status {status}"
                ));
            }
        }
        Ok((entry, code))
    }
}

impl Loaded {
    /// Runs the scavenger to its end (on its own coroutine stack).
    pub fn run(&self) -> c_int {
        // SAFETY: the entry point was resolved at load; argv is NULL-terminated and
        // outlives the call.
        unsafe {
            match &self.entry {
                EntryPoint::Msh(main) => main(self.argc, self.argv.as_ptr() as *mut *mut c_char),
                EntryPoint::Prototype(entry) => entry(),
                EntryPoint::Hosted(ref program) => program.run(),
            }
        }
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message.
    unsafe {
        let message = libc::dlerror();
        if message.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        }
    }
}

fn open(path: &str) -> Result<*mut c_void, String> {
    // Only a regular file, checked without blocking on a FIFO (dlopen would block).
    // The check is on a descriptor held across the dlopen; dlopen itself takes a path.
    let _checked = msh_files::open_regular(std::path::Path::new(path), "scavenger").map_err(
        |err| match err.root_cause().downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::NotFound => {
                format!("{path}: no such file")
            }
            _ => format!("{err:#}"),
        },
    )?;
    let c_path = CString::new(path).map_err(|_| format!("{path:?} contains a NUL byte"))?;
    // SAFETY: dlopen with a valid C string. Not RTLD_DEEPBIND (which the MSH
    // prototype uses): the object's calls to exit/_exit/abort must reach libmsh's
    // (see `exits`), and with it they would bind to the C library's first.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        Err(dlerror())
    } else {
        Ok(handle)
    }
}

/// The largest scavenger object copied (a runaway read must not fill the program).
const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Loads a copy of `path` through a memfd, so its globals are its own.
fn open_private_copy(path: &str) -> Result<*mut c_void, String> {
    let bytes = msh_files::read_regular(std::path::Path::new(path), "scavenger", MAX_OBJECT_BYTES)
        .map_err(|e| format!("{e:#}"))?;
    // SAFETY: memfd_create with a valid name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"msh-scavenger".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "{path}: memfd_create: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?)
        .write_all(&bytes)
        .map_err(|e| format!("{path}: copying: {e}"))?;
    let handle = open(&format!("/proc/self/fd/{}", fd.as_raw_fd()));
    drop(fd); // the mapping keeps the object alive
    handle.map_err(|e| format!("{path}: {e}"))
}

/// A function symbol of `handle`: None when absent, an error when the name is
/// taken by something that is not a function (jumping into data would crash).
fn function(handle: *mut c_void, name: &CStr, path: &str) -> Result<Option<*mut c_void>, String> {
    let Some(addr) = symbol(handle, name) else {
        return Ok(None);
    };
    const RTLD_DL_SYMENT: c_int = 1;
    const STT_FUNC: u8 = 2;
    const STT_GNU_IFUNC: u8 = 10;
    let mut info = core::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let mut sym: *mut libc::Elf64_Sym = core::ptr::null_mut();
    // SAFETY: dladdr1 with valid out-pointers; the symbol entry it returns lives in
    // the loaded object.
    let kind = unsafe {
        let found = libc::dladdr1(
            addr,
            info.as_mut_ptr(),
            (&mut sym as *mut *mut libc::Elf64_Sym).cast(),
            RTLD_DL_SYMENT,
        );
        (found != 0 && !sym.is_null()).then(|| (*sym).st_info & 0xf)
    };
    match kind {
        Some(STT_FUNC | STT_GNU_IFUNC) => Ok(Some(addr)),
        _ => Err(format!(
            "{path}: {} is not a function",
            name.to_string_lossy()
        )),
    }
}

/// `dlsym`, or None when the symbol is absent.
fn symbol(handle: *mut c_void, name: &CStr) -> Option<*mut c_void> {
    // SAFETY: a live handle and a NUL-terminated name.
    let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!sym.is_null()).then_some(sym)
}

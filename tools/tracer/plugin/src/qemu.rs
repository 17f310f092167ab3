//! QEMU's TCG plugin API (version 1, as in QEMU 7.2), declared by hand: Debian ships no
//! header. The functions live in the qemu-x86_64 executable, which exports them; they
//! are looked up with `dlsym` when the plugin is installed rather than linked, so that
//! this crate's rlib (which msh links for the `shm` layout) has no undefined symbols.
use core::ffi::{c_char, c_int, c_uint, c_void};

/// The plugin API version this plugin was written against.
pub const PLUGIN_VERSION: c_int = 1;

/// `qemu_plugin_id_t`.
pub type PluginId = u64;
/// `qemu_plugin_meminfo_t`.
pub type MemInfo = u32;

/// `struct qemu_plugin_tb` (opaque).
#[repr(C)]
pub struct Tb {
    _opaque: [u8; 0],
}
/// `struct qemu_plugin_insn` (opaque).
#[repr(C)]
pub struct Insn {
    _opaque: [u8; 0],
}

/// `qemu_info_t` (its leading fields; the rest is not read).
#[repr(C)]
pub struct Info {
    /// Guest architecture, e.g. "x86_64".
    pub target_name: *const c_char,
    /// Oldest plugin API version QEMU accepts.
    pub version_min: c_int,
    /// QEMU's plugin API version.
    pub version_cur: c_int,
    /// True for system emulation (we need user mode).
    pub system_emulation: bool,
}

/// `enum qemu_plugin_cb_flags`: QEMU_PLUGIN_CB_NO_REGS.
pub const CB_NO_REGS: c_int = 0;
/// QEMU_PLUGIN_MEM_RW. (Registering separate R and W callbacks is not reliable in
/// QEMU 7.2: measured, a load fired the W callback and a store both.)
pub const MEM_RW: c_int = 3;
/// `enum qemu_plugin_op`: QEMU_PLUGIN_INLINE_ADD_U64.
pub const INLINE_ADD_U64: c_int = 0;

/// Callback types.
pub type TbTransCb = unsafe extern "C" fn(PluginId, *mut Tb);
/// A memory access: vCPU, meminfo, guest virtual address, user data.
pub type MemCb = unsafe extern "C" fn(c_uint, MemInfo, u64, *mut c_void);
/// vCPU init/exit.
pub type VcpuSimpleCb = unsafe extern "C" fn(PluginId, c_uint);
/// atexit.
pub type UdataCb = unsafe extern "C" fn(PluginId, *mut c_void);
/// A translation block executes.
pub type VcpuUdataCb = unsafe extern "C" fn(c_uint, *mut c_void);
/// Reset done.
pub type SimpleCb = unsafe extern "C" fn(PluginId);
/// A guest system call: number and eight arguments.
pub type SyscallCb =
    unsafe extern "C" fn(PluginId, c_uint, i64, u64, u64, u64, u64, u64, u64, u64, u64);
/// A guest system call returned.
pub type SyscallRetCb = unsafe extern "C" fn(PluginId, c_uint, i64, i64);

/// Looks one symbol up in the process (qemu exports its plugin API).
fn lookup(name: &core::ffi::CStr) -> Result<*mut c_void, String> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads.
    let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if address.is_null() {
        Err(format!(
            "qemu does not export {} (not a plugin-enabled qemu 7.x?)",
            name.to_string_lossy()
        ))
    } else {
        Ok(address)
    }
}

/// Declares [`Api`], one field per C function, and its resolver.
macro_rules! api {
    ($($field:ident: $type:ty = $name:literal,)*) => {
        /// The API functions, resolved from the running qemu.
        #[allow(missing_docs)]
        pub struct Api {
            $(pub $field: $type,)*
        }

        impl Api {
            /// Resolves every function, or names the first one missing.
            pub fn resolve() -> Result<Api, String> {
                Ok(Api {
                    $(
                        // SAFETY: the symbol is the QEMU function of that name, whose C
                        // prototype the field's type spells out.
                        $field: unsafe { core::mem::transmute::<*mut c_void, $type>(lookup($name)?) },
                    )*
                })
            }
        }
    };
}

api! {
    register_vcpu_tb_trans_cb: unsafe extern "C" fn(PluginId, TbTransCb) = c"qemu_plugin_register_vcpu_tb_trans_cb",
    register_vcpu_init_cb: unsafe extern "C" fn(PluginId, VcpuSimpleCb) = c"qemu_plugin_register_vcpu_init_cb",
    register_vcpu_exit_cb: unsafe extern "C" fn(PluginId, VcpuSimpleCb) = c"qemu_plugin_register_vcpu_exit_cb",
    register_atexit_cb: unsafe extern "C" fn(PluginId, UdataCb, *mut c_void) = c"qemu_plugin_register_atexit_cb",
    register_vcpu_syscall_cb: unsafe extern "C" fn(PluginId, SyscallCb) = c"qemu_plugin_register_vcpu_syscall_cb",
    register_vcpu_syscall_ret_cb: unsafe extern "C" fn(PluginId, SyscallRetCb) = c"qemu_plugin_register_vcpu_syscall_ret_cb",
    register_vcpu_tb_exec_cb: unsafe extern "C" fn(*mut Tb, VcpuUdataCb, c_int, *mut c_void) = c"qemu_plugin_register_vcpu_tb_exec_cb",
    register_vcpu_tb_exec_inline: unsafe extern "C" fn(*mut Tb, c_int, *mut c_void, u64) = c"qemu_plugin_register_vcpu_tb_exec_inline",
    register_vcpu_mem_cb: unsafe extern "C" fn(*mut Insn, MemCb, c_int, c_int, *mut c_void) = c"qemu_plugin_register_vcpu_mem_cb",
    tb_n_insns: unsafe extern "C" fn(*const Tb) -> usize = c"qemu_plugin_tb_n_insns",
    tb_get_insn: unsafe extern "C" fn(*const Tb, usize) -> *mut Insn = c"qemu_plugin_tb_get_insn",
    insn_vaddr: unsafe extern "C" fn(*const Insn) -> u64 = c"qemu_plugin_insn_vaddr",
    insn_haddr: unsafe extern "C" fn(*const Insn) -> *mut c_void = c"qemu_plugin_insn_haddr",
    mem_size_shift: unsafe extern "C" fn(MemInfo) -> c_uint = c"qemu_plugin_mem_size_shift",
    mem_is_store: unsafe extern "C" fn(MemInfo) -> bool = c"qemu_plugin_mem_is_store",
    reset: unsafe extern "C" fn(PluginId, SimpleCb) = c"qemu_plugin_reset",
}

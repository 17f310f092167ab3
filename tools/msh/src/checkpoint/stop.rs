//! Stopping a process's threads from outside (ptrace `SEIZE` + `INTERRUPT`, as CRIU
//! does) and reading its memory (`process_vm_readv`) while they are stopped.

use anyhow::{bail, Context, Result};
use msh_core::os::errno;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Threads of one process held in a ptrace stop; resumed on [`Stopped::resume`] or drop.
pub(crate) struct Stopped {
    pid: i32,
    /// Each stopped thread, with a signal to re-deliver when it stopped for one.
    threads: Vec<(i32, i32)>,
    since: Instant,
}

fn tids(pid: i32) -> Result<BTreeSet<i32>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("process {pid} exited during the checkpoint"))?;
    Ok(dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// ptrace's unused address and data arguments (varargs: pass full pointers, not ints).
const NULL: *mut libc::c_void = std::ptr::null_mut();

impl Stopped {
    /// Stops every thread of `pid` except `except` (threads created meanwhile too).
    /// All are interrupted before any is waited for, so their stops overlap.
    pub fn all_but(pid: u32, except: Option<u32>) -> Result<Stopped> {
        let mut stopped = Stopped {
            pid: pid as i32,
            threads: Vec::new(),
            since: Instant::now(),
        };
        let except = except.map(|t| t as i32);
        let mut seen = BTreeSet::new();
        loop {
            let new: Vec<i32> = tids(stopped.pid)?
                .into_iter()
                .filter(|t| !seen.contains(t) && Some(*t) != except)
                .collect();
            if new.is_empty() {
                break;
            }
            let mut seized = Vec::new();
            for tid in new {
                seen.insert(tid);
                if stopped.interrupt(tid)? {
                    seized.push(tid);
                }
            }
            for tid in seized {
                stopped.wait(tid)?;
            }
        }
        if stopped.threads.is_empty() && except.is_none() {
            bail!("process {pid} exited during the checkpoint");
        }
        Ok(stopped)
    }

    /// Stops one more thread of the process.
    pub fn stop(&mut self, tid: i32) -> Result<()> {
        if self.interrupt(tid)? {
            self.wait(tid)?;
        }
        Ok(())
    }

    /// Seizes and interrupts `tid`; false when it is gone.
    fn interrupt(&mut self, tid: i32) -> Result<bool> {
        let pid = self.pid;
        // SAFETY: plain ptrace requests on a thread id.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, NULL, NULL) } != 0 {
            return match errno() {
                libc::ESRCH if tid != pid => Ok(false), // the thread exited: nothing to stop
                libc::ESRCH => bail!("process {pid} exited during the checkpoint"),
                libc::EPERM => bail!(
                    "cannot stop process {pid}: ptrace is not permitted (same user and ptrace rights, or root)"
                ),
                e => bail!(
                    "cannot stop thread {tid} of process {pid}: ptrace seize: {}",
                    std::io::Error::from_raw_os_error(e)
                ),
            };
        }
        // SAFETY: as above; the thread is now ours to interrupt.
        unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, NULL, NULL) };
        Ok(true)
    }

    /// Waits for interrupted `tid` to stop and records it.
    fn wait(&mut self, tid: i32) -> Result<()> {
        let pid = self.pid;
        let mut status = 0;
        // SAFETY: waiting for our tracee.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if waited != tid || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if tid == pid {
                bail!("process {pid} exited during the checkpoint");
            }
            return Ok(());
        }
        // A stop for a signal rather than our interrupt: hand it back at detach.
        let event = status >> 16;
        let signal = libc::WSTOPSIG(status);
        let redeliver = if event == 0 && signal != libc::SIGTRAP {
            signal
        } else {
            0
        };
        self.threads.push((tid, redeliver));
        Ok(())
    }

    /// The rseq areas of the stopped threads, `(address, length)`: the kernel rewrites
    /// them (the current CPU) whenever a thread returns to user space, so two reads of
    /// an idle process can differ there and nowhere else.
    pub fn rseq_areas(&self) -> Vec<(usize, usize)> {
        /// `struct ptrace_rseq_configuration` (Linux 5.13+).
        #[repr(C)]
        #[derive(Default)]
        struct RseqConfiguration {
            rseq_abi_pointer: u64,
            rseq_abi_size: u32,
            signature: u32,
            flags: u32,
            pad: u32,
        }
        let mut areas = Vec::new();
        for &(tid, _) in &self.threads {
            let mut conf = RseqConfiguration::default();
            let size = std::mem::size_of::<RseqConfiguration>();
            // SAFETY: the kernel writes at most `size` bytes into `conf`.
            let n = unsafe {
                libc::ptrace(
                    libc::PTRACE_GET_RSEQ_CONFIGURATION,
                    tid,
                    size as *mut libc::c_void,
                    (&mut conf as *mut RseqConfiguration).cast::<libc::c_void>(),
                )
            };
            if n > 0 && conf.rseq_abi_pointer != 0 {
                areas.push((conf.rseq_abi_pointer as usize, conf.rseq_abi_size as usize));
            }
        }
        areas
    }

    /// Lets every thread run again; returns how long they were stopped.
    pub fn resume(mut self) -> Duration {
        self.detach_all();
        self.since.elapsed()
    }

    fn detach_all(&mut self) {
        for (tid, signal) in self.threads.drain(..) {
            // SAFETY: detaching our tracee (ESRCH if it is gone, which is fine).
            unsafe {
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    tid,
                    NULL,
                    signal as usize as *mut libc::c_void,
                )
            };
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Reads `runs` (`(start, pages)`) of process `pid` into one buffer, in order.
pub(crate) fn read_runs(pid: u32, runs: &[(usize, usize)], page: usize) -> Result<Vec<u8>> {
    let total: usize = runs.iter().map(|r| r.1 * page).sum();
    let mut data = vec![0u8; total];
    if total >= 4 << 20 {
        // The buffer is fresh (untouched) memory: let its first writes fault in huge
        // pages, 512 times fewer faults while the process waits.
        // SAFETY: advice on our own allocation; it does not change its contents.
        unsafe { libc::madvise(data.as_mut_ptr().cast(), total, libc::MADV_HUGEPAGE) };
    }
    let mut offset = 0;
    // process_vm_readv takes at most IOV_MAX (1024) remote vectors per call.
    for batch in runs.chunks(1024) {
        let bytes: usize = batch.iter().map(|r| r.1 * page).sum();
        let remote: Vec<libc::iovec> = batch
            .iter()
            .map(|&(start, pages)| libc::iovec {
                iov_base: start as *mut libc::c_void,
                iov_len: pages * page,
            })
            .collect();
        read_into(pid, &remote, &mut data[offset..offset + bytes])?;
        offset += bytes;
    }
    Ok(data)
}

/// Reads `[start, start + out.len())` of process `pid` into `out`.
pub(crate) fn read_range(pid: u32, start: usize, out: &mut [u8]) -> Result<()> {
    let remote = [libc::iovec {
        iov_base: start as *mut libc::c_void,
        iov_len: out.len(),
    }];
    read_into(pid, &remote, out)
}

fn read_into(pid: u32, remote: &[libc::iovec], out: &mut [u8]) -> Result<()> {
    let mut done = 0;
    // A call may stop short at 2 GiB or at a vector boundary: continue where it stopped.
    let mut vectors: Vec<libc::iovec> = remote.to_vec();
    while done < out.len() {
        let local = libc::iovec {
            iov_base: out[done..].as_mut_ptr().cast(),
            iov_len: out.len() - done,
        };
        // SAFETY: `local` is our buffer; the remote vectors are only read by the kernel.
        let n = unsafe {
            libc::process_vm_readv(
                pid as i32,
                &local,
                1,
                vectors.as_ptr(),
                vectors.len() as libc::c_ulong,
                0,
            )
        };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                bail!("process {pid} exited during the checkpoint");
            }
            let at = vectors.first().map_or(0, |v| v.iov_base as usize);
            bail!("cannot read the memory of process {pid} at {at:#x}: {e}");
        }
        let mut n = n as usize;
        done += n;
        // Drop what was read from the front of the remote vectors.
        while n > 0 && !vectors.is_empty() {
            let first = &mut vectors[0];
            if n >= first.iov_len {
                n -= first.iov_len;
                vectors.remove(0);
            } else {
                first.iov_base = (first.iov_base as usize + n) as *mut libc::c_void;
                first.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

//! An SQLite VFS, [`NAME`], that gathers what SQLite writes to a WAL file and hands it to the
//! kernel in one `pwrite` when SQLite syncs the file, instead of two per page.
//!
//! SQLite writes each WAL frame as two writes, the frame's 24-byte header and then its page, so
//! a commit of N pages costs 2N system calls. The frames are 4,120 bytes long, so most writes
//! also start or end inside a page of the page cache, and ext4 maps blocks and marks buffers
//! for each such write: under a burst those writes were ~28% of the store writer's CPU
//! (`bench/RESULTS.md`, issue 21's eleventh look). A commit's frames follow one another in the
//! file, so they go as one write.
//!
//! Everything else is the platform's default VFS, called through: the database file, journals
//! and temporary files are never gathered, and neither are the shared-memory calls (SQLite
//! makes those on the database file only).
//!
//! What it must never do:
//! - keep a byte SQLite wrote to a file past that file's `xSync`: the sync writes out what is
//!   gathered first, so "acknowledged after fsync" still means the frames are on disk;
//! - let a read, size, truncation, lock or control call on the file act on the file without
//!   what was written to it before: each writes out what is gathered first, and so does a write
//!   that does not follow on from what is gathered (keeping the order of the writes);
//! - serve a connection whose commits do not sync the WAL (`synchronous` below FULL): SQLite
//!   publishes a commit's frames in the WAL index without another call on the WAL file, and
//!   other connections would read the file before they reach it. The store opens every
//!   connection with `synchronous = FULL`.

#[cfg(test)]
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name to open connections with (`Connection::open_with_flags_and_vfs`).
pub const NAME: &str = "payflow-wal";
const NAME_C: &CStr = c"payflow-wal";

/// The most gathered before it is written out anyway: the unix VFS writes at most 128 KiB - 1
/// per call (`seekAndWriteFd` masks the length with `0x1ffff`; a longer write comes back short
/// and SQLite reports the disk full). That is 31 frames of 4 KiB pages, so a burst's commit of
/// ~36 frames takes two writes instead of 72.
const GATHER_LIMIT: usize = 0x1ffff;

/// Registers the VFS with SQLite (once per process; later calls return at once). Fails only if
/// SQLite has no default VFS or refuses the registration.
pub fn register() -> Result<&'static str, RegisterError> {
    static REGISTERED: OnceLock<Result<(), RegisterError>> = OnceLock::new();
    REGISTERED.get_or_init(register_once).clone().map(|()| NAME)
}

/// Why the VFS could not be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// SQLite has no default VFS to call through to.
    NoDefaultVfs,
    /// `sqlite3_vfs_register` returned this code.
    Refused(c_int),
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoDefaultVfs => write!(f, "SQLite has no default VFS for {NAME} to call through to"),
            Self::Refused(code) => write!(f, "SQLite refused to register the {NAME} VFS (code {code})"),
        }
    }
}

impl std::error::Error for RegisterError {}

fn register_once() -> Result<(), RegisterError> {
    // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, which SQLite never frees. The
    // VFS built from it is leaked, so it outlives every connection that names it.
    unsafe {
        let real = ffi::sqlite3_vfs_find(std::ptr::null());
        if real.is_null() {
            return Err(RegisterError::NoDefaultVfs);
        }
        let r = &*real;
        let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
            // Version 2: the system-call overrides of version 3 are for SQLite's own tests.
            iVersion: r.iVersion.min(2),
            szOsFile: REAL_AT as c_int + r.szOsFile,
            mxPathname: r.mxPathname,
            pNext: std::ptr::null_mut(),
            zName: NAME_C.as_ptr(),
            pAppData: real.cast(),
            xOpen: Some(open),
            xDelete: Some(delete),
            xAccess: Some(access),
            xFullPathname: Some(full_pathname),
            // The loader's calls ignore their VFS argument; the gateway loads no extension.
            xDlOpen: r.xDlOpen,
            xDlError: r.xDlError,
            xDlSym: r.xDlSym,
            xDlClose: r.xDlClose,
            xRandomness: Some(randomness),
            xSleep: Some(sleep),
            xCurrentTime: Some(current_time),
            xGetLastError: Some(last_error),
            xCurrentTimeInt64: Some(current_time_i64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        }));
        match ffi::sqlite3_vfs_register(vfs, 0) {
            ffi::SQLITE_OK => Ok(()),
            code => Err(RegisterError::Refused(code)),
        }
    }
}

/// The file SQLite sees: our methods, then the default VFS's own file at [`REAL_AT`].
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// What is written but not yet handed to the kernel; null for any file but a WAL.
    gathered: *mut Gathered,
}

/// Bytes for the file from `start` on, in the order SQLite wrote them.
struct Gathered {
    start: i64,
    bytes: Vec<u8>,
}

/// Where the default VFS's file lives inside ours (pointer-aligned).
const REAL_AT: usize = std::mem::size_of::<File>().next_multiple_of(std::mem::align_of::<u64>());

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

#[cfg(test)]
thread_local! {
    /// Writes handed to the kernel for WAL files on this thread (SQLite runs a connection's
    /// I/O on the thread that steps it): what the tests count.
    static WAL_WRITES: Cell<u64> = const { Cell::new(0) };
}

fn real_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY (of callers): `vfs` is ours, registered with `pAppData` = the default VFS.
    unsafe { (*vfs).pAppData.cast() }
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = real_vfs(vfs);
    let f = file.cast::<File>();
    let real = file.cast::<u8>().add(REAL_AT).cast::<ffi::sqlite3_file>();
    (*real).pMethods = std::ptr::null();
    let Some(real_open) = (*real_vfs).xOpen else { return ffi::SQLITE_ERROR };
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    let gathered = if rc == ffi::SQLITE_OK && flags & ffi::SQLITE_OPEN_WAL != 0 {
        Box::into_raw(Box::new(Gathered { start: 0, bytes: Vec::new() }))
    } else {
        std::ptr::null_mut()
    };
    // SQLite calls xClose when pMethods is set, even after a failed open: ours whenever the
    // default VFS set its own, so its close runs.
    let methods = if (*real).pMethods.is_null() { std::ptr::null() } else { &METHODS as *const _ };
    f.write(File { base: ffi::sqlite3_file { pMethods: methods }, real, gathered });
    rc
}

/// The default VFS's file and its methods.
unsafe fn real(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    let real = (*file.cast::<File>()).real;
    (real, &*(*real).pMethods)
}

unsafe fn real_write(file: *mut ffi::sqlite3_file, bytes: *const c_void, len: c_int, offset: i64) -> c_int {
    let (real, m) = real(file);
    #[cfg(test)]
    if !(*file.cast::<File>()).gathered.is_null() {
        WAL_WRITES.with(|n| n.set(n.get() + 1));
    }
    m.xWrite.map_or(ffi::SQLITE_IOERR_WRITE, |w| w(real, bytes, len, offset))
}

/// Hands what is gathered to the kernel. Emptied whatever the outcome: after a failed write
/// SQLite abandons the transaction and rewrites those frames, if ever, itself.
unsafe fn write_out(file: *mut ffi::sqlite3_file) -> c_int {
    let gathered = (*file.cast::<File>()).gathered;
    if gathered.is_null() || (*gathered).bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let bytes = std::mem::take(&mut (*gathered).bytes);
    let rc = real_write(file, bytes.as_ptr().cast(), bytes.len() as c_int, (*gathered).start);
    // Keep the allocation for the next commit.
    (*gathered).bytes = bytes;
    (*gathered).bytes.clear();
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    bytes: *const c_void,
    len: c_int,
    offset: i64,
) -> c_int {
    let gathered = (*file.cast::<File>()).gathered;
    if gathered.is_null() {
        return real_write(file, bytes, len, offset);
    }
    // No reference into `gathered` is held across `write_out`, which takes its own.
    let (start, held) = ((*gathered).start, (*gathered).bytes.len());
    if held > 0 && (start + held as i64 != offset || held + len as usize > GATHER_LIMIT) {
        let rc = write_out(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if len as usize > GATHER_LIMIT {
        return real_write(file, bytes, len, offset);
    }
    let g = &mut *gathered;
    if g.bytes.is_empty() {
        g.start = offset;
    }
    g.bytes.extend_from_slice(std::slice::from_raw_parts(bytes.cast::<u8>(), len as usize));
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let written = write_out(file);
    let f = file.cast::<File>();
    if !(*f).gathered.is_null() {
        drop(Box::from_raw((*f).gathered));
        (*f).gathered = std::ptr::null_mut();
    }
    let (real, m) = real(file);
    let closed = m.xClose.map_or(ffi::SQLITE_OK, |c| c(real));
    if written != ffi::SQLITE_OK {
        written
    } else {
        closed
    }
}

/// Writes out what is gathered, returning the error if that fails: first in every method that
/// could observe the file.
macro_rules! write_out_first {
    ($file:expr) => {
        let rc = write_out($file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    };
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, out: *mut c_void, len: c_int, offset: i64) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xRead.map_or(ffi::SQLITE_IOERR_READ, |x| x(real, out, len, offset))
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xTruncate.map_or(ffi::SQLITE_IOERR_TRUNCATE, |x| x(real, size))
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xSync.map_or(ffi::SQLITE_IOERR_FSYNC, |x| x(real, flags))
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xFileSize.map_or(ffi::SQLITE_IOERR_FSTAT, |x| x(real, size))
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xLock.map_or(ffi::SQLITE_IOERR_LOCK, |x| x(real, level))
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xUnlock.map_or(ffi::SQLITE_IOERR_UNLOCK, |x| x(real, level))
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xCheckReservedLock.map_or(ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, |x| x(real, out))
}

unsafe extern "C" fn file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xFileControl.map_or(ffi::SQLITE_NOTFOUND, |x| x(real, op, arg))
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    len: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // No memory map (`*out` left null) is always an allowed answer.
    *out = std::ptr::null_mut();
    write_out_first!(file);
    let (real, m) = real(file);
    m.xFetch.map_or(ffi::SQLITE_OK, |x| x(real, offset, len, out))
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, page: *mut c_void) -> c_int {
    write_out_first!(file);
    let (real, m) = real(file);
    m.xUnfetch.map_or(ffi::SQLITE_OK, |x| x(real, offset, page))
}

// Asked while a commit's frames are being written (sector padding): answering needs nothing
// written out.
unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (real, m) = real(file);
    m.xSectorSize.map_or(4096, |x| x(real))
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (real, m) = real(file);
    m.xDeviceCharacteristics.map_or(0, |x| x(real))
}

// Shared memory belongs to the database file, which is never gathered: straight through.
unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (real, m) = real(file);
    m.xShmMap.map_or(ffi::SQLITE_IOERR_SHMMAP, |x| x(real, region, size, extend, out))
}

unsafe extern "C" fn shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    let (real, m) = real(file);
    m.xShmLock.map_or(ffi::SQLITE_IOERR_SHMLOCK, |x| x(real, offset, n, flags))
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    let (real, m) = real(file);
    if let Some(x) = m.xShmBarrier {
        x(real)
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let (real, m) = real(file);
    m.xShmUnmap.map_or(ffi::SQLITE_OK, |x| x(real, delete))
}

unsafe extern "C" fn delete(vfs: *mut ffi::sqlite3_vfs, name: *const c_char, sync_dir: c_int) -> c_int {
    let r = real_vfs(vfs);
    (*r).xDelete.map_or(ffi::SQLITE_IOERR_DELETE, |x| x(r, name, sync_dir))
}

unsafe extern "C" fn access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let r = real_vfs(vfs);
    (*r).xAccess.map_or(ffi::SQLITE_IOERR_ACCESS, |x| x(r, name, flags, out))
}

unsafe extern "C" fn full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let r = real_vfs(vfs);
    (*r).xFullPathname.map_or(ffi::SQLITE_CANTOPEN, |x| x(r, name, n, out))
}

unsafe extern "C" fn randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let r = real_vfs(vfs);
    (*r).xRandomness.map_or(0, |x| x(r, n, out))
}

unsafe extern "C" fn sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    let r = real_vfs(vfs);
    (*r).xSleep.map_or(0, |x| x(r, micros))
}

unsafe extern "C" fn current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let r = real_vfs(vfs);
    (*r).xCurrentTime.map_or(ffi::SQLITE_ERROR, |x| x(r, out))
}

unsafe extern "C" fn last_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let r = real_vfs(vfs);
    (*r).xGetLastError.map_or(0, |x| x(r, n, out))
}

unsafe extern "C" fn current_time_i64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    let r = real_vfs(vfs);
    (*r).xCurrentTimeInt64.map_or(ffi::SQLITE_ERROR, |x| x(r, out))
}

#[cfg(test)]
mod tests;

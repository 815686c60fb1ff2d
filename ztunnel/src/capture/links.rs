//! eBPF capture's sk_lookup links as kernel objects that outlive ztunnel. Each pod's link is
//! pinned in bpffs (`<pin dir>/netns-<inode>`), so while no ztunnel runs the pod's program
//! stays attached and, its listeners gone from its socket map (a socket leaves the map when it
//! is closed), refuses the flows it would capture instead of letting them reach the app.
//!
//! A restarted ztunnel finds a pod's link again through the kernel's list of links (the
//! program's name, the netns inode), not only through its pin, so a pin it cannot see (another
//! bpffs mount stacked on ours) is no hole; it then swaps its own program into that link with
//! `BPF_LINK_UPDATE`, which is atomic: the netns is never without a program.
//!
//! aya 0.14 neither updates nor lists netns links, and hands out its descriptors only as its own
//! types, so the few bpf(2) commands used here are made directly.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tracing::info;

/// Where bpffs is mounted (and where ztunnel mounts it when nothing is).
pub const BPFFS: &str = "/sys/fs/bpf";

/// File name of a pod's pinned link in the pin directory.
const PIN_PREFIX: &str = "netns-";

// bpf(2) commands (`enum bpf_cmd`).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;
/// `BPF_SK_LOOKUP` of `enum bpf_attach_type`.
const BPF_SK_LOOKUP: u32 = 36;
/// `BPF_LINK_TYPE_NETNS` of `enum bpf_link_type`.
const BPF_LINK_TYPE_NETNS: u32 = 5;

/// A `union bpf_attr`, written by byte offset (native byte order). 128 bytes cover every
/// command used here; the kernel reads the rest of its own, larger union as zeros.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32(mut self, offset: usize, v: u32) -> Attr {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(mut self, offset: usize, v: u64) -> Attr {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn get_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_ne_bytes(b)
    }
}

/// Runs bpf(2) command `cmd`; returns what the kernel returned (a descriptor for some).
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable buffer of the size passed, and every pointer written
    // into it (paths, info buffers) belongs to the caller and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Runs a bpf(2) command that returns a new descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: on success these commands return a descriptor the kernel just opened for this
    // process, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Descriptors are non-negative.
    fd.as_raw_fd() as u32
}

/// Attaches the sk_lookup program `prog` to the netns `netns`; the link is detached when its
/// last descriptor (or pin) goes.
pub fn create(prog: BorrowedFd<'_>, netns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // link_create: prog_fd, target_fd, attach_type, flags.
    let mut attr = Attr::new()
        .u32(0, fd_u32(prog))
        .u32(4, fd_u32(netns))
        .u32(8, BPF_SK_LOOKUP);
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// Replaces the program of `link` with `prog` in one step.
pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // link_update: link_fd, new_prog_fd, flags, old_prog_fd.
    let mut attr = Attr::new().u32(0, fd_u32(link)).u32(4, fd_u32(prog));
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches `link` from its netns now, whoever else holds or pins it. A link whose netns is
/// gone is already detached.
pub fn detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new().u32(0, fd_u32(link));
    match bpf(BPF_LINK_DETACH, &mut attr) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What the kernel says of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// Whether it is an sk_lookup link on a network namespace.
    pub sk_lookup: bool,
    /// Inode of its netns; 0 once that netns is gone (the kernel detached the link).
    pub netns_ino: u32,
}

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // `struct bpf_link_info`: type, id, prog_id, then (8-aligned, at 16) the per-type union,
    // whose netns member is netns_ino, attach_type. No pointer member is set, so the kernel
    // writes nowhere else.
    let mut info = Attr::new();
    let mut attr = Attr::new()
        .u32(0, fd_u32(link))
        .u32(4, 32)
        .u64(8, info.0.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        id: info.get_u32(4),
        prog_id: info.get_u32(8),
        sk_lookup: info.get_u32(0) == BPF_LINK_TYPE_NETNS && info.get_u32(20) == BPF_SK_LOOKUP,
        netns_ino: info.get_u32(16),
    })
}

/// The name of loaded program `id` (as the kernel keeps it: at most 15 bytes).
fn program_name(id: u32) -> io::Result<String> {
    let mut attr = Attr::new().u32(0, id);
    let prog = bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // `struct bpf_prog_info`: the name is 16 bytes at offset 64; asking for 80 bytes leaves
    // every pointer member (all before it) zero, so the kernel fills no array.
    let mut info = Attr::new();
    let mut attr = Attr::new()
        .u32(0, fd_u32(prog.as_fd()))
        .u32(4, 80)
        .u64(8, info.0.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &info.0[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Every sk_lookup link of program `program` (by name) attached to the netns with inode `ino`,
/// from the kernel's list of links: those a dead ztunnel pinned, wherever.
pub fn find(program: &str, ino: u64) -> io::Result<Vec<OwnedFd>> {
    // The kernel keeps program names to 15 bytes.
    let wanted = &program.as_bytes()[..program.len().min(15)];
    let mut found = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = Attr::new().u32(0, id);
        match bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr.get_u32(4),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        let mut attr = Attr::new().u32(0, id);
        let link = match bpf_fd(BPF_LINK_GET_FD_BY_ID, &mut attr) {
            Ok(link) => link,
            // Released between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let info = link_info(link.as_fd())?;
        if !info.sk_lookup || u64::from(info.netns_ino) != ino || info.netns_ino == 0 {
            continue;
        }
        match program_name(info.prog_id) {
            Ok(name) if name.as_bytes() == wanted => found.push(link),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// Mounts bpffs at [`BPFFS`] unless one is mounted there. Two ztunnels starting together (the
/// lab runs several) take a lock on the directory first, so they do not stack two mounts, of
/// which the lower one's pins would be out of sight.
pub fn ensure_bpffs() -> io::Result<()> {
    let dir = std::fs::File::open(BPFFS)?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))
        .and_then(|_locked| {
            if is_bpffs(Path::new(BPFFS))? {
                return Ok(());
            }
            nix::mount::mount(
                Some("bpf"),
                BPFFS,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(io::Error::from)?;
            info!(path = BPFFS, "mounted bpffs (it was not mounted)");
            Ok(())
        })
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let fs = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// ztunnel's directory of pinned links, on bpffs.
#[derive(Debug, Clone)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Creates the directory (mounting bpffs at [`BPFFS`] first when it is under it and nothing
    /// is mounted there); fails when the directory is not on bpffs.
    pub fn open(path: &Path) -> io::Result<PinDir> {
        if path.starts_with(BPFFS) {
            ensure_bpffs()?;
        }
        std::fs::create_dir_all(path)?;
        if !is_bpffs(path)? {
            return Err(io::Error::other(format!(
                "{} is not on a bpf filesystem (mount -t bpf bpf {BPFFS}; in Kubernetes, a \
                 hostPath volume of {BPFFS})",
                path.display()
            )));
        }
        Ok(PinDir { path: path.into() })
    }

    /// The directory as it is: no mount, no creation; fails when it does not exist.
    pub fn existing(path: &Path) -> io::Result<PinDir> {
        if !path.is_dir() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(PinDir { path: path.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the link of the pod whose netns has inode `ino` is pinned.
    pub fn pin_path(&self, ino: u64) -> PathBuf {
        self.path.join(format!("{PIN_PREFIX}{ino}"))
    }

    /// Pins `link` for netns `ino`, in place of whatever was pinned there (the caller holds
    /// the link, so it stays attached in between).
    pub fn pin(&self, link: BorrowedFd<'_>, ino: u64) -> io::Result<()> {
        let path = self.pin_path(ino);
        self.unpin(ino)?;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // obj_pin: pathname, bpf_fd, file_flags.
        let mut attr = Attr::new().u64(0, c.as_ptr() as u64).u32(8, fd_u32(link));
        bpf(BPF_OBJ_PIN, &mut attr).map(drop)
    }

    /// Removes the pin of netns `ino` (nothing when there is none).
    pub fn unpin(&self, ino: u64) -> io::Result<()> {
        match std::fs::remove_file(self.pin_path(ino)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Opens the link pinned at `path`.
    pub fn open_pin(path: &Path) -> io::Result<OwnedFd> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut attr = Attr::new().u64(0, c.as_ptr() as u64);
        bpf_fd(BPF_OBJ_GET, &mut attr)
    }

    /// The netns inodes that have a pin here.
    pub fn pinned(&self) -> io::Result<Vec<u64>> {
        let mut inodes = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            if let Some(ino) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PIN_PREFIX))
                .and_then(|n| n.parse().ok())
            {
                inodes.push(ino);
            }
        }
        Ok(inodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_are_written_at_their_offsets_in_native_order() {
        let a = Attr::new()
            .u32(4, 0x0102_0304)
            .u64(8, 0x1122_3344_5566_7788);
        assert_eq!(a.get_u32(4), 0x0102_0304);
        assert_eq!(&a.0[8..16], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert!(a.0[..4].iter().all(|&b| b == 0));
    }
}

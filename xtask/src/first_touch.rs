//! What the first write to fresh memory costs on this host, against a
//! second write to the same amount.
//!
//! On bare metal both are a page fault and a zeroed page. In a virtual
//! machine whose free memory is handed back to the hypervisor (virtio-balloon
//! *free page reporting*), a page the guest has not touched since is not
//! backed by the host any more, and the first write to it is also a fault
//! in the hypervisor. The kernel's socket slabs for a million connections
//! are gigabytes of fresh pages, so that cost lands in the ramp, inside
//! `allocate_slab`. The doctor measures it so the ramp's profile can be
//! read against it.

use std::io;
use std::time::Instant;

/// Bytes written in each of the two rounds.
pub const MEASURED_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirstTouch {
    /// GiB per second writing one byte to every page of fresh memory.
    pub first_gib_per_s: f64,
    /// The same, right after the first round's memory was given back.
    pub again_gib_per_s: f64,
    /// Does a virtio-balloon device offer free page reporting? `None`: no
    /// balloon device (or not Linux).
    pub free_page_reporting: Option<bool>,
}

impl FirstTouch {
    /// Is the first write markedly slower than the second?
    pub fn first_is_slow(&self) -> bool {
        self.first_gib_per_s * 2.0 < self.again_gib_per_s
    }

    pub fn describe(&self) -> String {
        format!(
            "{:.1} GiB/s, then {:.1} GiB/s{}",
            self.first_gib_per_s,
            self.again_gib_per_s,
            match self.free_page_reporting {
                Some(true) => " (free page reporting)",
                Some(false) => " (balloon, no reporting)",
                None => "",
            }
        )
    }
}

/// Two rounds of mapping `bytes`, writing a byte to every page, unmapping.
pub fn measure(bytes: usize) -> io::Result<FirstTouch> {
    let first = touch_fresh_pages(bytes)?;
    let again = touch_fresh_pages(bytes)?;
    let gib = bytes as f64 / f64::from(1u32 << 30);
    Ok(FirstTouch {
        first_gib_per_s: gib / first.max(1e-9),
        again_gib_per_s: gib / again.max(1e-9),
        free_page_reporting: free_page_reporting(),
    })
}

/// Maps `bytes` of anonymous memory, writes one byte to each page, and
/// unmaps it; returns the seconds the writes took.
pub fn touch_fresh_pages(bytes: usize) -> io::Result<f64> {
    const PAGE: usize = 4096;
    // SAFETY: an anonymous private mapping at an address the kernel picks;
    // no file, no existing memory is affected. The result is checked.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = Instant::now();
    let base = map.cast::<u8>();
    for offset in (0..bytes).step_by(PAGE) {
        // SAFETY: `offset < bytes`, inside the writable mapping made above;
        // volatile so the writes are not optimised away.
        unsafe { base.add(offset).write_volatile(1) };
    }
    let seconds = start.elapsed().as_secs_f64();
    // SAFETY: unmaps exactly the mapping made above, which nothing else
    // refers to.
    if unsafe { libc::munmap(map, bytes) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(seconds)
}

/// `VIRTIO_BALLOON_F_REPORTING` (feature bit 5) of the first balloon
/// device: sysfs shows a device's features as a string of 0s and 1s, bit 0
/// first.
fn free_page_reporting() -> Option<bool> {
    let devices = std::fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon").ok()?;
    devices.flatten().find_map(|entry| {
        let features = std::fs::read_to_string(entry.path().join("features")).ok()?;
        Some(features.as_bytes().get(5) == Some(&b'1'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rounds_are_measured() {
        let touch = measure(8 << 20).unwrap();
        assert!(touch.first_gib_per_s > 0.0 && touch.first_gib_per_s.is_finite());
        assert!(touch.again_gib_per_s > 0.0 && touch.again_gib_per_s.is_finite());
    }

    #[test]
    fn a_first_touch_under_half_the_second_is_slow() {
        let touch = |first, again| FirstTouch {
            first_gib_per_s: first,
            again_gib_per_s: again,
            free_page_reporting: Some(true),
        };
        assert!(touch(0.9, 3.3).first_is_slow());
        assert!(!touch(2.0, 3.3).first_is_slow());
        assert_eq!(
            touch(0.9, 3.3).describe(),
            "0.9 GiB/s, then 3.3 GiB/s (free page reporting)"
        );
    }
}

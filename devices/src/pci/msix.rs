//! MSI-X for one function: the vector table, the pending-bit array and the message control
//! bits (PCI Local Bus 3.0, 6.8.2).
//!
//! Each vector has an irqfd the VMM created and routes, with KVM GSI routing, to the message
//! (address, data) the guest wrote in the table. This model owns the table and decides when a
//! vector fires: a trigger on a vector that is masked, or while the whole function is masked,
//! sets its pending bit instead, and the interrupt is delivered when it is unmasked. Device
//! threads trigger vectors without a lock (every field is an atomic); only vCPUs, through the
//! BAR and the capability, change the table, one at a time under the transport's lock.
//!
//! The VMM learns of a message through [`MsiRouting::route`], called when a vector becomes
//! live (unmasked, MSI-X enabled, function unmasked) with a message it has not routed yet, and
//! always before that vector's irqfd is written, so no interrupt goes to a stale route.

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use super::{for_each_dword, read_dwords};
use crate::sync::lock;

/// The MSI-X capability id.
pub const CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// The most vectors a function may have.
pub const MAX_VECTORS: usize = 2048;
/// Message control bit 15: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control bit 14: function mask.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;

/// Where a vector's interrupt goes: an MSI write of `data` to `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// The message address.
    pub address: u64,
    /// The message data.
    pub data: u32,
}

/// The VMM's side of MSI-X: keeps each vector's irqfd routed to its message.
pub trait MsiRouting: Send + Sync {
    /// Routes vector `vector`'s irqfd to `message` (KVM GSI routing). Called on a vCPU thread
    /// with the function's lock held; the irqfd may be written as soon as this returns.
    fn route(&self, vector: u16, message: MsiMessage) -> io::Result<()>;
}

/// Errors building an MSI-X table (VMM bugs, never guest input).
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    /// No irqfds, or more than a table holds.
    #[error("an MSI-X table has 1 to {MAX_VECTORS} vectors, not {0}")]
    VectorCount(usize),
}

#[derive(Debug, Default)]
struct Entry {
    /// Address low, address high, data, vector control.
    words: [AtomicU32; 4],
}

impl Entry {
    fn load(&self) -> [u32; 4] {
        self.words.each_ref().map(|w| w.load(Ordering::SeqCst))
    }

    fn masked(&self) -> bool {
        self.words[3].load(Ordering::SeqCst) & VECTOR_MASKED != 0
    }

    fn message(&self) -> MsiMessage {
        let [lo, hi, data, _] = self.load();
        MsiMessage {
            address: u64::from(hi) << 32 | u64::from(lo),
            data,
        }
    }
}

/// One function's MSI-X state.
pub struct Msix {
    entries: Box<[Entry]>,
    pending: Box<[AtomicU64]>,
    /// The enable and function-mask bits of message control.
    control: AtomicU16,
    irqs: Box<[EventFd]>,
    routing: Arc<dyn MsiRouting>,
    /// The message each vector was last routed to.
    routed: Mutex<Vec<Option<MsiMessage>>>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.entries.len())
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl Msix {
    /// A table with one vector per irqfd in `irqs`, all masked and MSI-X disabled, as at
    /// power-on; `routing` is told where each vector goes.
    pub fn new(irqs: Vec<EventFd>, routing: Arc<dyn MsiRouting>) -> Result<Self, MsixError> {
        let n = irqs.len();
        if n == 0 || n > MAX_VECTORS {
            return Err(MsixError::VectorCount(n));
        }
        let entries: Box<[Entry]> = (0..n).map(|_| Entry::default()).collect();
        for e in entries.iter() {
            e.words[3].store(VECTOR_MASKED, Ordering::SeqCst);
        }
        Ok(Self {
            entries,
            pending: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            control: AtomicU16::new(0),
            irqs: irqs.into_boxed_slice(),
            routing,
            routed: Mutex::new(vec![None; n]),
        })
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        // At most MAX_VECTORS.
        self.entries.len() as u16
    }

    /// Vector `vector`'s irqfd, for the VMM to register with KVM.
    pub fn irq(&self, vector: u16) -> Option<&EventFd> {
        self.irqs.get(usize::from(vector))
    }

    /// Bytes of the table region.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Bytes of the pending-bit array.
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// Whether the guest enabled MSI-X (if not, the function interrupts through INTx).
    pub fn enabled(&self) -> bool {
        self.control.load(Ordering::SeqCst) & CONTROL_ENABLE != 0
    }

    /// The message control register: table size, function mask, enable.
    pub fn message_control(&self) -> u16 {
        self.control.load(Ordering::SeqCst) | (self.vectors() - 1)
    }

    /// The capability's body (after id and next pointer): message control, then the table's
    /// and the PBA's offsets in BAR `bar`.
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 10] {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&self.message_control().to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(bar & 7)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(bar & 7)).to_le_bytes());
        body
    }

    fn live(&self, vector: usize) -> bool {
        let control = self.control.load(Ordering::SeqCst);
        control & CONTROL_ENABLE != 0
            && control & CONTROL_FUNCTION_MASK == 0
            && !self.entries[vector].masked()
    }

    /// Whether `vector` has an interrupt pending.
    pub fn pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        v < self.entries.len() && self.pending[v / 64].load(Ordering::SeqCst) & (1 << (v % 64)) != 0
    }

    /// Fires `vector`, or leaves it pending while it is masked. Lock-free: device threads call
    /// it. A vector past the table is dropped (the driver assigned one the device lacks).
    pub fn trigger(&self, vector: u16) -> io::Result<()> {
        let v = usize::from(vector);
        if v >= self.entries.len() {
            return Ok(());
        }
        if self.live(v) {
            return self.irqs[v].write(1);
        }
        self.pending[v / 64].fetch_or(1 << (v % 64), Ordering::SeqCst);
        // Unmasked meanwhile: whoever clears the pending bit delivers it, exactly once.
        self.deliver_pending(v)
    }

    fn deliver_pending(&self, v: usize) -> io::Result<()> {
        let bit = 1 << (v % 64);
        if self.live(v) && self.pending[v / 64].fetch_and(!bit, Ordering::SeqCst) & bit != 0 {
            return self.irqs[v].write(1);
        }
        Ok(())
    }

    fn route(&self, v: usize) {
        let message = self.entries[v].message();
        let mut routed = lock(&self.routed);
        if routed[v] != Some(message) {
            if let Err(err) = self.routing.route(v as u16, message) {
                warn!("msi-x: cannot route vector {v}: {err}");
            }
            routed[v] = Some(message);
        }
    }

    /// The guest wrote message control: only the enable and function-mask bits change.
    pub fn set_message_control(&self, value: u16) {
        let new = value & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        let live = new & CONTROL_ENABLE != 0 && new & CONTROL_FUNCTION_MASK == 0;
        if live {
            for v in 0..self.entries.len() {
                if !self.entries[v].masked() {
                    self.route(v);
                }
            }
        }
        self.control.store(new, Ordering::SeqCst);
        if live {
            self.deliver_all_pending();
        }
    }

    fn deliver_all_pending(&self) {
        for v in 0..self.entries.len() {
            if let Err(err) = self.deliver_pending(v) {
                warn!("msi-x: cannot deliver pending vector {v}: {err}");
            }
        }
    }

    /// A guest read of the table region (any width; past the table, zero).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        read_dwords(offset, data, |reg| {
            let (entry, word) = ((reg / 4) as usize, (reg % 4) as usize);
            self.entries
                .get(entry)
                .map_or(0, |e| e.words[word].load(Ordering::SeqCst))
        });
    }

    /// A guest write to the table region (any width; past the table, ignored). A vector's new
    /// message is routed before its mask bit clears, and a pending interrupt is delivered
    /// once it is unmasked.
    pub fn write_table(&self, offset: u64, data: &[u8]) {
        let mut touched: Vec<(usize, [u32; 4])> = Vec::with_capacity(2);
        for_each_dword(offset, data, |reg, mask, value| {
            let (entry, word) = ((reg / 4) as usize, (reg % 4) as usize);
            let Some(e) = self.entries.get(entry) else {
                return;
            };
            let at = match touched.iter().position(|(i, _)| *i == entry) {
                Some(at) => at,
                None => {
                    touched.push((entry, e.load()));
                    touched.len() - 1
                }
            };
            let words = &mut touched[at].1;
            // Vector control bits other than the mask are reserved (read zero).
            let mask = if word == 3 {
                mask & VECTOR_MASKED
            } else {
                mask
            };
            words[word] = (words[word] & !mask) | (value & mask);
        });
        for (entry, words) in touched {
            self.set_entry(entry, words);
        }
    }

    fn set_entry(&self, v: usize, words: [u32; 4]) {
        let e = &self.entries[v];
        for (slot, value) in e.words[..3].iter().zip(&words[..3]) {
            slot.store(*value, Ordering::SeqCst);
        }
        let control = self.control.load(Ordering::SeqCst);
        let unmasked = words[3] & VECTOR_MASKED == 0;
        if unmasked && control & CONTROL_ENABLE != 0 && control & CONTROL_FUNCTION_MASK == 0 {
            self.route(v);
        }
        e.words[3].store(words[3], Ordering::SeqCst);
        if unmasked {
            if let Err(err) = self.deliver_pending(v) {
                warn!("msi-x: cannot deliver pending vector {v}: {err}");
            }
        }
    }

    /// A guest read of the pending-bit array (read-only; writes are ignored).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        read_dwords(offset, data, |reg| {
            let word = self
                .pending
                .get((reg / 2) as usize)
                .map_or(0, |p| p.load(Ordering::SeqCst));
            (word >> ((reg % 2) * 32)) as u32
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: u64 = 0xfee0_1000;

    #[derive(Default)]
    struct Routes(Mutex<Vec<(u16, MsiMessage)>>);

    impl MsiRouting for Routes {
        fn route(&self, vector: u16, message: MsiMessage) -> io::Result<()> {
            lock(&self.0).push((vector, message));
            Ok(())
        }
    }

    fn table(vectors: usize) -> (Msix, Arc<Routes>) {
        let routes = Arc::new(Routes::default());
        let irqs = (0..vectors)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        (Msix::new(irqs, routes.clone()).unwrap(), routes)
    }

    fn fired(m: &Msix, vector: u16) -> bool {
        m.irq(vector).unwrap().read().is_ok()
    }

    /// Programs `vector` with a message, still masked, as Linux does before unmasking.
    fn program(m: &Msix, vector: u16, data: u32) {
        let at = u64::from(vector) * ENTRY_SIZE;
        m.write_table(at, &ADDRESS.to_le_bytes());
        m.write_table(at + 8, &data.to_le_bytes());
    }

    fn set_mask(m: &Msix, vector: u16, masked: bool) {
        m.write_table(
            u64::from(vector) * ENTRY_SIZE + 12,
            &u32::from(masked).to_le_bytes(),
        );
    }

    fn pba(m: &Msix) -> u64 {
        let mut data = [0u8; 8];
        m.read_pba(0, &mut data);
        u64::from_le_bytes(data)
    }

    #[test]
    fn a_masked_vector_stays_pending_until_unmasked_then_fires_once_after_routing() {
        let (m, routes) = table(3);
        m.set_message_control(CONTROL_ENABLE);
        program(&m, 1, 0x41);
        assert!(lock(&routes.0).is_empty(), "masked entries are not routed");
        m.trigger(1).unwrap();
        assert!(!fired(&m, 1));
        assert!(m.pending(1));
        assert_eq!(pba(&m), 0b10);

        set_mask(&m, 1, false);
        let message = MsiMessage {
            address: ADDRESS,
            data: 0x41,
        };
        assert_eq!(*lock(&routes.0), vec![(1, message)]);
        assert!(fired(&m, 1), "delivered on unmask");
        assert!(!m.pending(1));
        assert_eq!(pba(&m), 0);
        m.trigger(1).unwrap();
        assert!(fired(&m, 1), "live: straight through");
        set_mask(&m, 1, true);
        set_mask(&m, 1, false);
        assert!(!fired(&m, 1), "nothing was pending");
        assert_eq!(
            lock(&routes.0).len(),
            1,
            "an unchanged message is not routed again"
        );
    }

    #[test]
    fn the_function_mask_and_the_enable_bit_hold_every_vector() {
        let (m, routes) = table(2);
        for v in 0..2 {
            program(&m, v, 0x30 + u32::from(v));
            set_mask(&m, v, false);
        }
        assert!(lock(&routes.0).is_empty(), "not routed while MSI-X is off");
        m.set_message_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert!(
            lock(&routes.0).is_empty(),
            "nor while the function is masked"
        );
        m.trigger(0).unwrap();
        m.trigger(1).unwrap();
        assert!(!fired(&m, 0) && !fired(&m, 1));
        assert_eq!(pba(&m), 0b11);
        m.set_message_control(CONTROL_ENABLE);
        assert_eq!(lock(&routes.0).len(), 2);
        assert!(
            fired(&m, 0) && fired(&m, 1),
            "both delivered when the function unmasks"
        );
        assert_eq!(m.message_control(), CONTROL_ENABLE | 1, "table size N-1");
        m.set_message_control(0xffff);
        assert_eq!(m.message_control(), 0xc001, "the size is read-only");
        m.set_message_control(0);
        assert!(!m.enabled());
        m.trigger(9).unwrap();
        assert_eq!(pba(&m), 0, "a vector past the table is dropped");
    }

    #[test]
    fn the_table_reads_and_writes_at_every_width() {
        let (m, _) = table(2);
        m.write_table(16, &0x1122_3344_5566_7788u64.to_le_bytes());
        m.write_table(24, &[0xaa]);
        m.write_table(25, &0xbbccu16.to_le_bytes());
        m.write_table(28, &0xffff_fffeu32.to_le_bytes());
        let mut entry = [0u8; 16];
        m.read_table(16, &mut entry);
        assert_eq!(&entry[..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&entry[8..12], &[0xaa, 0xcc, 0xbb, 0]);
        assert_eq!(
            &entry[12..],
            &[0; 4],
            "reserved control bits read zero, unmasked"
        );
        let mut word = [0u8; 2];
        m.read_table(22, &mut word);
        assert_eq!(word, [0x22, 0x11]);
        let mut dword = [0u8; 4];
        m.read_table(12, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 1, "entry 0 starts masked");
        m.write_table(32, &[0xff; 8]);
        m.read_table(32, &mut dword);
        assert_eq!(dword, [0; 4], "past the table");
        m.read_pba(8, &mut dword);
        assert_eq!(dword, [0; 4]);
    }

    #[test]
    fn a_trigger_racing_an_unmask_is_never_left_pending_on_a_live_vector() {
        // The race window is a few instructions wide: enough rounds to hit it most runs.
        const ROUNDS: usize = 50_000;
        let (m, _) = table(1);
        let m = Arc::new(m);
        m.set_message_control(CONTROL_ENABLE);
        program(&m, 0, 0x41);
        let start = Arc::new(std::sync::Barrier::new(2));
        let done = Arc::new(std::sync::Barrier::new(2));
        let device = {
            let (m, start, done) = (m.clone(), start.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    start.wait();
                    m.trigger(0).unwrap();
                    done.wait();
                }
            })
        };
        for round in 0..ROUNDS {
            set_mask(&m, 0, true);
            start.wait();
            set_mask(&m, 0, false);
            done.wait();
            assert!(
                !m.pending(0),
                "round {round}: pending on an unmasked vector"
            );
            assert!(fired(&m, 0), "round {round}: the trigger was lost");
        }
        device.join().unwrap();
    }

    #[test]
    fn table_sizes_are_checked() {
        let routes: Arc<dyn MsiRouting> = Arc::new(Routes::default());
        assert!(matches!(
            Msix::new(Vec::new(), routes),
            Err(MsixError::VectorCount(0))
        ));
        let (m, _) = table(65);
        assert_eq!((m.vectors(), m.table_len(), m.pba_len()), (65, 65 * 16, 16));
        m.set_message_control(CONTROL_ENABLE);
        m.trigger(64).unwrap();
        let mut data = [0u8; 4];
        m.read_pba(8, &mut data);
        assert_eq!(data, [1, 0, 0, 0], "vector 64 is bit 0 of the second word");
    }
}

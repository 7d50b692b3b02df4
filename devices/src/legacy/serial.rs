//! The COM1 8250 UART: a thin port-bus adapter over `vm_superio::Serial`.
//!
//! Output goes to an injected writer, called on the vCPU thread for every byte the guest
//! transmits; the writer must therefore never block (the VMM gives it a bounded buffer drained by
//! another thread). Input is pushed by the VMM into the 64-byte receive FIFO; when the guest has
//! read the FIFO empty, the [`InputReadyEvent`] fires so the VMM reads more host input without
//! polling.

use std::io::Write;

use log::warn;
use vm_superio::Serial;
use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::IrqTrigger;
use crate::bus::BusDevice;

/// Signals that the receive FIFO was drained by the guest and can take more input.
#[derive(Debug)]
pub struct InputReadyEvent(pub EventFd);

impl SerialEvents for InputReadyEvent {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(err) = self.0.write(1) {
            warn!("serial: cannot signal that the input FIFO is free: {err}");
        }
    }
}

/// COM1 as a bus device.
pub struct SerialDevice<W: Write + Send> {
    serial: Serial<IrqTrigger, InputReadyEvent, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    /// Creates a UART raising `irq` on interrupts and writing guest output to `out`.
    pub fn new(irq: IrqTrigger, input_ready: InputReadyEvent, out: W) -> Self {
        Self {
            serial: Serial::with_events(irq, input_ready, out),
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(err) => {
                // The bytes are in the FIFO; only the interrupt failed, which the next access
                // to the UART retries.
                warn!("serial: cannot raise the receive interrupt: {err}");
                bytes.len().min(self.serial.fifo_capacity())
            }
        }
    }

    #[cfg(test)]
    fn writer_mut(&mut self) -> &mut W {
        self.serial.writer_mut()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART's registers are 8 bits wide; a wider access reads the register in its low byte.
        data.fill(0);
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.serial.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            if let Err(err) = self.serial.write(offset, value) {
                warn!("serial: guest write to register {offset} failed: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 0x01;

    fn device() -> SerialDevice<Vec<u8>> {
        SerialDevice::new(
            IrqTrigger::new().unwrap(),
            InputReadyEvent(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            Vec::new(),
        )
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let mut dev = device();
        for b in b"hi\n" {
            dev.write(THR, &[*b]);
        }
        assert_eq!(dev.writer_mut().as_slice(), b"hi\n");
    }

    #[test]
    fn input_is_bounded_by_the_fifo_and_signals_when_drained() {
        let mut dev = device();
        let big = [b'a'; 100];
        let taken = dev.enqueue_input(&big);
        assert_eq!(taken, 64);
        assert_eq!(dev.input_capacity(), 0);
        assert_eq!(dev.enqueue_input(&big), 0);

        let mut byte = [0u8];
        for _ in 0..taken {
            dev.read(LSR, &mut byte);
            assert_ne!(byte[0] & LSR_DATA_READY, 0);
            dev.read(THR, &mut byte);
            assert_eq!(byte[0], b'a');
        }
        dev.read(LSR, &mut byte);
        assert_eq!(byte[0] & LSR_DATA_READY, 0);
        assert_eq!(dev.serial.events().0.read().unwrap(), 1);
    }

    #[test]
    fn receive_interrupt_fires_when_enabled() {
        let mut dev = device();
        dev.write(IER, &[0x01]);
        dev.enqueue_input(b"x");
        assert!(dev.serial.interrupt_evt().0.read().unwrap() >= 1);
    }

    #[test]
    fn odd_widths_and_offsets_do_not_panic() {
        let mut dev = device();
        let mut wide = [0xffu8; 8];
        dev.read(LSR, &mut wide);
        assert_eq!(&wide[1..], &[0; 7]);
        dev.read(LSR, &mut []);
        dev.write(THR, &[]);
        dev.write(7, &[1, 2, 3, 4]);
        dev.write(300, &[1]);
        dev.read(300, &mut wide);
    }
}

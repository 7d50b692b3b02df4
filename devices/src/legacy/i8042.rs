//! The i8042 PS/2 controller, with just enough of a keyboard behind it for a guest to reset the
//! machine and for the VMM to send Ctrl-Alt-Del.
//!
//! Linux reboots with `reboot=k` by pulsing the CPU reset line (command 0xFE on port 0x64); that
//! write fires the reset event, which the VMM turns into a clean exit. The controller also answers
//! the commands Linux's i8042 and atkbd drivers issue while probing, so they find a keyboard
//! instead of waiting for timeouts. There is no auxiliary (mouse) port.
//!
//! The controller does not translate scancodes (its configuration byte starts with translation
//! off), so injected keys are in scancode set 2.

use std::collections::VecDeque;

use log::{debug, warn};
use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::{ExitNotifier, GuestExit, IrqTrigger};

/// Offset of the data port (0x60) within the device's range.
const DATA: u64 = 0;
/// Offset of the status (read) / command (write) port (0x64) within the device's range.
const COMMAND: u64 = 4;

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// The keyboard is not inhibited by the (absent) key lock; Linux warns when this bit is clear.
const STATUS_KBD_UNLOCKED: u8 = 0x10;

// Configuration byte ("command byte") bits.
const CONFIG_KBD_INT: u8 = 0x01;
const CONFIG_SYSTEM_FLAG: u8 = 0x04;
const CONFIG_KBD_DISABLED: u8 = 0x10;
const CONFIG_AUX_DISABLED: u8 = 0x20;
const CONFIG_DEFAULT: u8 = CONFIG_KBD_INT | CONFIG_SYSTEM_FLAG;

// Controller commands.
const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_PULSE_RESET: u8 = 0xfe;

// Replies.
const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;

// Keyboard commands that reply with more than an ACK.
const KBD_CMD_IDENTIFY: u8 = 0xf2;
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_RESET: u8 = 0xff;
/// Identification bytes of a standard MF2 keyboard.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Output port bit 0: the CPU reset line, active low.
const OUTPUT_PORT_RESET_HIGH: u8 = 0x01;

/// Scancode set 2 for pressing Ctrl, Alt and Delete, then releasing them.
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // make: Ctrl, Alt, Delete
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // break: Delete, Alt, Ctrl
];

/// A real controller holds one byte; a short queue lets multi-byte replies and injected key
/// sequences wait for the guest without growing without bound.
const OUTPUT_QUEUE_LEN: usize = 16;

/// The controller state.
pub struct I8042 {
    config: u8,
    status: u8,
    output: VecDeque<u8>,
    /// A command waiting for its parameter byte on the data port.
    pending: Option<u8>,
    irq: IrqTrigger,
    exit: ExitNotifier,
}

impl I8042 {
    /// Creates a controller that raises `irq` (IRQ 1) for keyboard data and tells `exit` when
    /// the guest resets the machine.
    pub fn new(irq: IrqTrigger, exit: ExitNotifier) -> Self {
        Self {
            config: CONFIG_DEFAULT,
            status: STATUS_SYSTEM_FLAG | STATUS_KBD_UNLOCKED,
            output: VecDeque::with_capacity(OUTPUT_QUEUE_LEN),
            pending: None,
            irq,
            exit,
        }
    }

    /// Queues the keystrokes of Ctrl-Alt-Del, which Linux's keyboard driver turns into a reboot
    /// (or whatever the guest's init chose). Returns false if the queue had no room for them.
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        if OUTPUT_QUEUE_LEN - self.output.len() < CTRL_ALT_DEL.len() {
            return false;
        }
        for code in CTRL_ALT_DEL {
            self.push(code);
        }
        self.raise_irq();
        true
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_QUEUE_LEN {
            self.output.push_back(byte);
        } else {
            debug!("i8042: output queue full, byte {byte:#04x} dropped");
        }
    }

    fn raise_irq(&self) {
        if !self.output.is_empty() && self.config & CONFIG_KBD_INT != 0 {
            if let Err(err) = self.irq.trigger() {
                warn!("i8042: cannot raise the keyboard interrupt: {err}");
            }
        }
    }

    fn reset(&self) {
        self.exit.notify(GuestExit::Reset);
    }

    fn command(&mut self, cmd: u8) {
        self.pending = None;
        match cmd {
            CMD_READ_CONFIG => self.push(self.config),
            CMD_WRITE_CONFIG | CMD_WRITE_OUTPUT_PORT | CMD_WRITE_KBD_BUFFER => {
                self.pending = Some(cmd)
            }
            CMD_DISABLE_AUX => self.config |= CONFIG_AUX_DISABLED,
            CMD_ENABLE_AUX => self.config &= !CONFIG_AUX_DISABLED,
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST => self.push(KBD_TEST_OK),
            CMD_DISABLE_KBD => self.config |= CONFIG_KBD_DISABLED,
            CMD_ENABLE_KBD => self.config &= !CONFIG_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.push(OUTPUT_PORT_RESET_HIGH),
            CMD_PULSE_RESET => self.reset(),
            other => debug!("i8042: command {other:#04x} ignored"),
        }
        self.raise_irq();
    }

    fn data(&mut self, byte: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CONFIG) => {
                self.config = byte;
                self.status = (self.status & !STATUS_SYSTEM_FLAG) | (byte & CONFIG_SYSTEM_FLAG);
            }
            Some(CMD_WRITE_OUTPUT_PORT) if byte & OUTPUT_PORT_RESET_HIGH == 0 => self.reset(),
            Some(CMD_WRITE_KBD_BUFFER) => self.push(byte),
            Some(_) => {}
            None => self.keyboard_command(byte),
        }
        self.raise_irq();
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            KBD_CMD_ECHO => self.push(KBD_CMD_ECHO),
            KBD_CMD_RESET => {
                self.output.clear();
                self.push(KBD_ACK);
                self.push(KBD_BAT_OK);
            }
            KBD_CMD_IDENTIFY => {
                self.push(KBD_ACK);
                KBD_ID.into_iter().for_each(|b| self.push(b));
            }
            // Every other keyboard command (LEDs, rates, scan set, enable...) is acknowledged:
            // the emulated keyboard has no state those commands would change.
            _ => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        match offset {
            DATA => {
                *first = self.output.pop_front().unwrap_or(0);
                self.raise_irq();
            }
            COMMAND => {
                let full = if self.output.is_empty() {
                    0
                } else {
                    STATUS_OUTPUT_FULL
                };
                *first = self.status | full;
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            DATA => {
                self.status &= !STATUS_LAST_WAS_COMMAND;
                self.data(byte);
            }
            COMMAND => {
                self.status |= STATUS_LAST_WAS_COMMAND;
                self.command(byte);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> I8042 {
        I8042::new(IrqTrigger::new().unwrap(), ExitNotifier::new().unwrap())
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    fn drain(dev: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while read(dev, COMMAND) & STATUS_OUTPUT_FULL != 0 {
            out.push(read(dev, DATA));
        }
        out
    }

    #[test]
    fn pulse_reset_fires_the_reset_event() {
        let mut dev = device();
        assert_eq!(dev.exit.requested(), None, "no reset before the command");
        dev.write(COMMAND, &[CMD_PULSE_RESET]);
        assert_eq!(dev.exit.requested(), Some(GuestExit::Reset));
    }

    #[test]
    fn output_port_reset_line_low_resets() {
        let mut dev = device();
        dev.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA, &[OUTPUT_PORT_RESET_HIGH]);
        assert_eq!(dev.exit.requested(), None);
        dev.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA, &[0]);
        assert_eq!(dev.exit.requested(), Some(GuestExit::Reset));
    }

    #[test]
    fn linux_probe_sequence_gets_answers() {
        let mut dev = device();
        dev.write(COMMAND, &[CMD_READ_CONFIG]);
        assert_eq!(drain(&mut dev), vec![CONFIG_DEFAULT]);
        dev.write(COMMAND, &[CMD_WRITE_CONFIG]);
        dev.write(DATA, &[CONFIG_KBD_INT]);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_SYSTEM_FLAG, 0);
        assert_ne!(read(&mut dev, COMMAND) & STATUS_KBD_UNLOCKED, 0);
        dev.write(COMMAND, &[CMD_READ_CONFIG]);
        assert_eq!(drain(&mut dev), vec![CONFIG_KBD_INT]);
        dev.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(drain(&mut dev), vec![SELF_TEST_OK]);
        dev.write(COMMAND, &[CMD_KBD_TEST]);
        assert_eq!(drain(&mut dev), vec![KBD_TEST_OK]);
        dev.write(DATA, &[KBD_CMD_RESET]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, KBD_BAT_OK]);
        dev.write(DATA, &[KBD_CMD_IDENTIFY]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, 0xab, 0x83]);
        dev.write(DATA, &[0xed]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK]);
    }

    #[test]
    fn ctrl_alt_del_is_queued_with_an_interrupt() {
        let mut dev = device();
        assert!(dev.send_ctrl_alt_del());
        assert!(dev.irq.0.read().unwrap() >= 1);
        assert_eq!(drain(&mut dev), CTRL_ALT_DEL.to_vec());
    }

    #[test]
    fn a_flooding_guest_cannot_grow_the_queue() {
        let mut dev = device();
        for _ in 0..1000 {
            dev.write(DATA, &[KBD_CMD_IDENTIFY]);
        }
        assert_eq!(dev.output.len(), OUTPUT_QUEUE_LEN);
        assert!(!dev.send_ctrl_alt_del());
        dev.write(7, &[1]);
        dev.write(DATA, &[]);
        let mut empty = [];
        dev.read(DATA, &mut empty);
    }
}

//! The console's escape keys, as QEMU has them: with the terminal in raw mode every key goes to
//! the guest, Ctrl-C included, so Ctrl-A starts a command for ember instead. Ctrl-A x ends the
//! VM, Ctrl-A h (or ?) lists the keys, Ctrl-A Ctrl-A sends one Ctrl-A to the guest; any other
//! key after Ctrl-A is dropped. Only an interactive terminal gets escape keys: piped input
//! reaches the guest byte for byte.

/// The escape key, Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What the console keys print for Ctrl-A h.
pub const HELP: &str = "\nember console keys:\n\
    \x20 Ctrl-A x       end the VM (ember exits with 130)\n\
    \x20 Ctrl-A Ctrl-A  send Ctrl-A to the guest\n\
    \x20 Ctrl-A h       show these keys\n";

/// A command typed after Ctrl-A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Ctrl-A x: end the VM.
    Quit,
    /// Ctrl-A h: list the keys.
    Help,
}

/// The escape state between reads: a Ctrl-A may arrive in one read and its key in the next.
#[derive(Debug, Default)]
pub struct EscapeKeys {
    escaped: bool,
}

impl EscapeKeys {
    /// Splits typed `input` into bytes for the guest (appended to `guest`) and commands. A
    /// quit ends the scan: nothing typed after it reaches the guest.
    pub fn filter(&mut self, input: &[u8], guest: &mut Vec<u8>) -> Vec<Command> {
        let mut commands = Vec::new();
        for &byte in input {
            if !self.escaped {
                if byte == ESCAPE {
                    self.escaped = true;
                } else {
                    guest.push(byte);
                }
                continue;
            }
            self.escaped = false;
            match byte {
                ESCAPE => guest.push(ESCAPE),
                b'x' => {
                    commands.push(Command::Quit);
                    break;
                }
                b'h' | b'?' => commands.push(Command::Help),
                _ => {}
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(keys: &mut EscapeKeys, input: &[u8]) -> (Vec<u8>, Vec<Command>) {
        let mut guest = Vec::new();
        let commands = keys.filter(input, &mut guest);
        (guest, commands)
    }

    #[test]
    fn ordinary_keys_ctrl_c_included_go_to_the_guest() {
        let mut keys = EscapeKeys::default();
        assert_eq!(
            typed(&mut keys, b"ls\x03\r"),
            (b"ls\x03\r".to_vec(), vec![])
        );
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads_and_drops_what_follows() {
        let mut keys = EscapeKeys::default();
        assert_eq!(typed(&mut keys, b"ab\x01"), (b"ab".to_vec(), vec![]));
        assert_eq!(
            typed(&mut keys, b"xreboot\r"),
            (vec![], vec![Command::Quit])
        );
    }

    #[test]
    fn ctrl_a_ctrl_a_sends_one_ctrl_a_and_h_asks_for_help() {
        let mut keys = EscapeKeys::default();
        assert_eq!(
            typed(&mut keys, b"\x01\x01a\x01hb\x01?"),
            (b"\x01ab".to_vec(), vec![Command::Help, Command::Help])
        );
        // An unknown key after Ctrl-A is dropped, as in QEMU, and the escape is over.
        assert_eq!(typed(&mut keys, b"\x01zq"), (b"q".to_vec(), vec![]));
    }
}

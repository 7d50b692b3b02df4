//! Legacy PC devices: the COM1 UART, the i8042 keyboard controller, the test-exit port and
//! Firecracker's boot timer.

mod boot_timer;
mod exit_port;
mod i8042;
mod serial;

pub use boot_timer::BootTimer;
pub use exit_port::ExitPort;
pub use i8042::I8042;
pub use serial::{InputReadyEvent, SerialDevice};

//! Legacy PC devices on the port I/O bus: the COM1 UART and the i8042 keyboard controller.

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::{InputReadyEvent, SerialDevice};

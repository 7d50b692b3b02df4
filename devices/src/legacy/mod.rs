//! Legacy PC devices: the COM1 UART, the i8042 keyboard controller, the test-exit port,
//! Firecracker's boot timer, the ACPI sleep registers and pvpanic.

mod acpi_sleep;
mod boot_timer;
mod exit_port;
mod i8042;
mod pvpanic;
mod serial;

pub use acpi_sleep::AcpiSleep;
pub use boot_timer::BootTimer;
pub use exit_port::ExitPort;
pub use i8042::I8042;
pub use pvpanic::PvPanic;
pub use serial::{InputReadyEvent, SerialDevice};

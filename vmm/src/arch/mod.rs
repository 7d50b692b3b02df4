//! Architecture-specific machine setup. ember supports x86_64 only.

pub mod x86_64;

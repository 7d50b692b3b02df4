//! The table of `rules.rs` compiled with seccompiler into one BPF program per thread kind.
//! vmm/build.rs runs this at build time (it includes this file and `rules.rs` by `#[path]`)
//! and ember embeds what it wrote; ember's own unit tests run it again to check that what
//! ember embeds is what the table gives today. It must therefore build on its own: `std`,
//! `libc`, `seccompiler` and the sibling `rules` module only.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::rules::{self, Args, Rule, ThreadKind};

/// `kind`'s filter: the syscalls of its rules are allowed (with their arguments checked where
/// a rule says so), any other raises SIGSYS.
pub(super) fn compile(kind: ThreadKind, arch: TargetArch) -> Result<BpfProgram, BackendError> {
    let filter = SeccompFilter::new(
        syscall_rules(rules::rules(kind))?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        arch,
    )?;
    BpfProgram::try_from(filter)
}

/// seccompiler's map from syscall to the rules of which one must match: no rules (any
/// arguments) if one of `rules` allows any; one rule per allowed value otherwise.
pub(super) fn syscall_rules<'a>(
    rules: impl Iterator<Item = &'a Rule>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let conditions = match rule.args {
            Args::Any => None,
            Args::Arg0(values) => Some(equal_to(0, values)?),
            Args::Arg1(values) => Some(equal_to(1, values)?),
            Args::NoCreate => Some(vec![SeccompRule::new(vec![SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(libc::O_CREAT as u64),
                0,
            )?])?]),
        };
        let entry = map.entry(rule.nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), conditions) {
            (Some(all), Some(more)) => all.extend(more),
            // Allowed with any arguments by one rule: the others add nothing.
            _ => *entry = None,
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect())
}

/// One rule per value: argument `index` (32 bits, as the kernel's `int` and `unsigned int`
/// arguments are) equals it.
fn equal_to(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    values
        .iter()
        .map(|&value| {
            SeccompRule::new(vec![SeccompCondition::new(
                index,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                value,
            )?])
        })
        .collect()
}

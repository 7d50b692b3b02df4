//! The table of `rules.rs` compiled into one classic-BPF program per thread kind. vmm/build.rs
//! runs this at build time (it includes this file and `rules.rs` by `#[path]`) and ember embeds
//! what it wrote; ember's own unit tests run it again to check that what ember embeds is what
//! the table gives today. It must therefore build on its own: `std`, `libc`, `seccompiler` (for
//! its `sock_filter` type), `thiserror` and the sibling `rules` module only.
//!
//! Why not seccompiler's compiler: seccompiler (0.5) emits a linear chain, five instructions
//! per allowed syscall in number order, so a syscall the table does not list runs through all
//! of them (ember's chains were 170-360 instructions). The kernel runs a new filter once for
//! every syscall number when it takes it in, to find the syscalls it may then allow without
//! running the filter (its action cache), and compiles it to machine code: both grow with the
//! program, and were paid on every ember thread's start, 120-240 us per filter against 19 us
//! for a one-rule filter (`cargo bench -p ember --bench seccomp`, on the 2-core test machine),
//! on the paths to API ready and InstanceStart. The program here is a binary search over the
//! syscall numbers whose leaves share the program's two final returns: 68-133 instructions,
//! about log2(n) + 5 of them run for a syscall the table does not list, 40-71 us to install.
//! A vCPU's `KVM_RUN`, whose arguments are checked on every exit to ember, runs as few.
//! libseccomp can emit such a tree but is a C library; no Rust crate does. seccompiler stays
//! the reference: the unit tests run its program and this one on every syscall number and
//! every argument value the table names and require the same action.

use std::collections::BTreeMap;

use seccompiler::sock_filter;

use super::rules::{self, Args, Rule, ThreadKind};

// Classic BPF (linux/bpf_common.h): the instructions these programs use.
/// `BPF_LD | BPF_W | BPF_ABS`: load 32 bits of the syscall's data.
const LOAD: u16 = 0x20;
/// `BPF_JMP | BPF_JA`: jump forward by `k`.
const JUMP: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`, `BPF_JGE`, `BPF_JSET`: skip `jt` if the comparison holds, `jf`
/// otherwise.
const JUMP_EQ: u16 = 0x15;
const JUMP_GE: u16 = 0x35;
const JUMP_SET: u16 = 0x45;
/// `BPF_RET | BPF_K`: return `k` as the action.
const RETURN: u16 = 0x06;

// seccomp's actions (linux/seccomp.h).
pub(super) const ALLOW: u32 = 0x7fff_0000;
/// Raise SIGSYS: ember's handler names the thread and the syscall.
pub(super) const TRAP: u32 = 0x0003_0000;
/// A syscall of another architecture (`int 0x80` from a 64-bit process): killed outright, as
/// seccompiler's programs do.
pub(super) const KILL_PROCESS: u32 = 0x8000_0000;

// `struct seccomp_data`: the syscall's number, its architecture (linux/audit.h), and its
// arguments, 64 bits each, of which the filters compare the low 32 (the kernel's `int` and
// `unsigned int` arguments: ioctl requests, fcntl commands, socket families, open flags).
const NR: u32 = 0;
const ARCH: u32 = 4;
pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const fn arg_low(index: u8) -> u32 {
    16 + 8 * index as u32
}

/// The kernel's limit on a program's length (`BPF_MAXINSNS`).
const MAX_LENGTH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(super) enum CompileError {
    #[error(
        "the rule for {name} compares an argument with {value:#x}, which does not fit the 32 \
         bits the filters compare: narrow the rule in vmm/src/seccomp/rules.rs"
    )]
    WideValue { name: &'static str, value: u64 },
    #[error(
        "the filter of the {kind} threads is {length} instructions, over the kernel's limit of \
         4096: split or shorten its rules in vmm/src/seccomp/rules.rs"
    )]
    TooLong { kind: &'static str, length: usize },
}

/// What a syscall's rules allow: any arguments, or arguments that meet one of the conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Allowed {
    Any,
    OneOf(Vec<Condition>),
}

/// A condition on one argument's low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Condition {
    /// The argument equals `value`.
    Equals { arg: u8, value: u32 },
    /// None of `mask`'s bits is set in the argument.
    Clear { arg: u8, mask: u32 },
}

/// `kind`'s filter: the syscalls of its rules are allowed (with their arguments checked where
/// a rule says so), any other raises SIGSYS.
pub(super) fn compile(kind: ThreadKind) -> Result<Vec<sock_filter>, CompileError> {
    let program = program(&allowed_syscalls(rules::rules(kind))?);
    if program.len() > MAX_LENGTH {
        return Err(CompileError::TooLong {
            kind: kind.name(),
            length: program.len(),
        });
    }
    Ok(program)
}

/// The program that allows `allowed` and traps the rest.
pub(super) fn program(allowed: &BTreeMap<u32, Allowed>) -> Vec<sock_filter> {
    let allowed: Vec<(u32, Allowed)> = allowed.clone().into_iter().collect();
    // Classic BPF jumps only forward, so the program is written from its end: each jump's
    // targets are written, and their distances known, before it.
    let mut program = Backwards::default();
    let ends = Ends {
        allow: program.push(statement(RETURN, ALLOW)),
        trap: program.push(statement(RETURN, TRAP)),
    };
    program.search(&allowed, ends);
    program.push(statement(LOAD, NR));
    program.push(statement(RETURN, KILL_PROCESS));
    program.push(jump(JUMP_EQ, AUDIT_ARCH_X86_64, 1, 0));
    program.push(statement(LOAD, ARCH));
    let Backwards(mut program) = program;
    program.reverse();
    program
}

/// The syscalls `rules` allow, by number: with any arguments if one rule allows any, else
/// with the conditions of all their rules, in the table's order (a vCPU's `KVM_RUN` first).
pub(super) fn allowed_syscalls<'a>(
    rules: impl Iterator<Item = &'a Rule>,
) -> Result<BTreeMap<u32, Allowed>, CompileError> {
    let mut map = BTreeMap::new();
    for rule in rules {
        let narrow = |value: u64| {
            u32::try_from(value).map_err(|_| CompileError::WideValue {
                name: rule.name,
                value,
            })
        };
        let equals = |arg: u8, values: &[u64]| {
            values
                .iter()
                .map(|&v| {
                    Ok(Condition::Equals {
                        arg,
                        value: narrow(v)?,
                    })
                })
                .collect::<Result<Vec<_>, CompileError>>()
        };
        let conditions = match rule.args {
            Args::Any => None,
            Args::Arg0(values) => Some(equals(0, values)?),
            Args::Arg1(values) => Some(equals(1, values)?),
            Args::NoCreate => Some(vec![Condition::Clear {
                arg: 2,
                mask: narrow(libc::O_CREAT as u64)?,
            }]),
        };
        // Syscall numbers are small and positive; the kernel compares them as 32 bits.
        let nr = rule.nr as u32;
        let entry = map.entry(nr).or_insert_with(|| Allowed::OneOf(Vec::new()));
        match (entry, conditions) {
            (Allowed::OneOf(all), Some(more)) => {
                for condition in more {
                    if !all.contains(&condition) {
                        all.push(condition);
                    }
                }
            }
            // Allowed with any arguments by one rule: the others add nothing.
            (entry, _) => *entry = Allowed::Any,
        }
    }
    Ok(map)
}

/// A program written from its last instruction to its first. An instruction's label is the
/// number of instructions after it, so that a jump knows how far ahead a label written before
/// it is.
#[derive(Default)]
struct Backwards(Vec<sock_filter>);

/// Where a jump goes: code, or a return of an action, which may be repeated nearer.
#[derive(Clone, Copy)]
enum Target {
    Code(usize),
    Return(usize, u32),
}

/// The labels of the program's final returns, which the leaves share while a conditional
/// jump (255 instructions ahead at most) reaches them.
#[derive(Clone, Copy)]
struct Ends {
    allow: usize,
    trap: usize,
}

impl Backwards {
    /// Writes `instruction` before all written so far; returns its label.
    fn push(&mut self, instruction: sock_filter) -> usize {
        self.0.push(instruction);
        self.0.len() - 1
    }

    /// How far ahead of the instruction written next `label` is.
    fn distance(&self, label: usize) -> usize {
        self.0.len() - 1 - label
    }

    /// A conditional jump to `yes` or `no`; returns its label. A target out of a conditional
    /// jump's reach gets a return of its own or a long jump, written just after the jump.
    fn branch(&mut self, code: u16, k: u32, yes: Target, no: Target) -> usize {
        let mut labels = [yes, no].map(|t| match t {
            Target::Code(label) | Target::Return(label, _) => label,
        });
        loop {
            let [jt, jf] = labels.map(|label| u8::try_from(self.distance(label)));
            match (jt, jf) {
                (Ok(jt), Ok(jf)) => return self.push(jump(code, k, jt, jf)),
                (Err(_), _) => labels[0] = self.nearer(yes, labels[0]),
                (_, Err(_)) => labels[1] = self.nearer(no, labels[1]),
            }
        }
    }

    /// `target`, last seen at `label`, written again right here: its return, or a long jump
    /// to its code (at most MAX_LENGTH ahead, which compile() checks).
    fn nearer(&mut self, target: Target, label: usize) -> usize {
        match target {
            Target::Return(_, action) => self.push(statement(RETURN, action)),
            Target::Code(_) => self.push(statement(JUMP, self.distance(label) as u32)),
        }
    }

    /// A binary search over `allowed` (sorted by number) for the syscall number in the
    /// accumulator, each leaf checking one syscall; returns the label of its first
    /// instruction. A comparison goes to the upper half when the number is at least the upper
    /// half's first.
    fn search(&mut self, allowed: &[(u32, Allowed)], ends: Ends) -> usize {
        let trap = Target::Return(ends.trap, TRAP);
        match allowed {
            [] => self.push(statement(RETURN, TRAP)),
            [(nr, Allowed::Any)] => {
                self.branch(JUMP_EQ, *nr, Target::Return(ends.allow, ALLOW), trap)
            }
            [(nr, Allowed::OneOf(conditions))] => {
                let checks = self.check(conditions, ends);
                self.branch(JUMP_EQ, *nr, Target::Code(checks), trap)
            }
            _ => {
                let (lower, upper) = allowed.split_at(allowed.len() / 2);
                let upper_start = self.search(upper, ends);
                let lower_start = self.search(lower, ends);
                let (upper_start, lower_start) =
                    (Target::Code(upper_start), Target::Code(lower_start));
                self.branch(JUMP_GE, upper[0].0, upper_start, lower_start)
            }
        }
    }

    /// One syscall's argument checks: allow if one of `conditions` holds, raise SIGSYS if none
    /// does; returns the label of the first instruction.
    fn check(&mut self, conditions: &[Condition], ends: Ends) -> usize {
        let allow = Target::Return(ends.allow, ALLOW);
        let mut next = Target::Return(ends.trap, TRAP);
        for (i, &condition) in conditions.iter().enumerate().rev() {
            let label = match condition {
                Condition::Equals { value, .. } => self.branch(JUMP_EQ, value, allow, next),
                Condition::Clear { mask, .. } => self.branch(JUMP_SET, mask, next, allow),
            };
            next = Target::Code(label);
            // Each run of conditions on one argument starts with its load.
            let arg = condition.arg();
            if i == 0 || conditions[i - 1].arg() != arg {
                next = Target::Code(self.push(statement(LOAD, arg_low(arg))));
            }
        }
        match next {
            Target::Code(label) | Target::Return(label, _) => label,
        }
    }
}

impl Condition {
    fn arg(self) -> u8 {
        match self {
            Condition::Equals { arg, .. } | Condition::Clear { arg, .. } => arg,
        }
    }
}

fn statement(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

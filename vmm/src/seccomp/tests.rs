use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::compile::{ALLOW, AUDIT_ARCH_X86_64, Allowed, Condition, KILL_PROCESS, TRAP};
use super::rules::{Args, Rule};
use super::*;

#[test]
fn the_built_in_programs_are_what_compile_rs_makes_of_the_table_today() {
    // build.rs compiled them; a table changed since (or a build that did not rerun) fails here.
    let built_in = built_in();
    assert_eq!(built_in.len(), ThreadKind::ALL.len());
    for kind in ThreadKind::ALL {
        let compiled = compile::compile(kind).unwrap();
        assert!(
            built_in[&kind] == compiled.as_slice(),
            "{}: the embedded filter is not the table's",
            kind.name()
        );
    }
}

/// Runs a seccomp program on a syscall as the kernel does: its action and the number of
/// instructions it ran. Only the instructions seccompiler's and ember's programs use.
fn run(program: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
    let mut data = [0u8; 64];
    data[..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, arg) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
    }
    let (mut a, mut pc, mut steps) = (0u32, 0usize, 0);
    loop {
        let i = &program[pc];
        let k = i.k as usize;
        (pc, steps) = (pc + 1, steps + 1);
        let taken = match i.code {
            0x06 => return (i.k, steps),
            0x20 => {
                a = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                continue;
            }
            0x54 => {
                a &= i.k;
                continue;
            }
            0x05 => {
                pc += k;
                continue;
            }
            0x15 => a == i.k,
            0x25 => a > i.k,
            0x35 => a >= i.k,
            0x45 => a & i.k != 0,
            code => panic!("instruction {code:#x} at {}", pc - 1),
        };
        pc += usize::from(if taken { i.jt } else { i.jf });
    }
}

/// The table compiled by seccompiler, as ember did before compile.rs: the reference.
fn seccompiler_program(kind: ThreadKind) -> BpfProgram {
    let condition = |arg, op, value| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value);
    let rule = |conditions| SeccompRule::new(conditions).unwrap();
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for r in rules::rules(kind) {
        let conditions: Option<Vec<SeccompRule>> = match r.args {
            Args::Any => None,
            Args::Arg0(values) | Args::Arg1(values) => {
                let arg = if matches!(r.args, Args::Arg0(_)) {
                    0
                } else {
                    1
                };
                let eq = |&v| rule(vec![condition(arg, SeccompCmpOp::Eq, v).unwrap()]);
                Some(values.iter().map(eq).collect())
            }
            Args::NoCreate => {
                let op = SeccompCmpOp::MaskedEq(libc::O_CREAT as u64);
                Some(vec![rule(vec![condition(2, op, 0).unwrap()])])
            }
        };
        let entry = map.entry(r.nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), conditions) {
            (Some(all), Some(more)) => all.extend(more),
            _ => *entry = None,
        }
    }
    let map = map.into_iter().map(|(nr, r)| (nr, r.unwrap_or_default()));
    let filter = SeccompFilter::new(
        map.collect(),
        SeccompAction::Trap,
        SeccompAction::Allow,
        ARCH,
    );
    filter.unwrap().try_into().unwrap()
}

#[test]
fn every_program_decides_every_syscall_as_seccompilers_program_of_the_table_does() {
    // Every value any rule names, and values near the masks and flags.
    let mut values: Vec<u64> = ThreadKind::ALL
        .into_iter()
        .flat_map(rules::rules)
        .flat_map(|r| match r.args {
            Args::Arg0(v) | Args::Arg1(v) => v.to_vec(),
            Args::Any | Args::NoCreate => vec![],
        })
        .collect();
    let o_creat = libc::O_CREAT as u64;
    values.extend([
        0,
        1,
        0xffff_ffff,
        o_creat,
        o_creat | 2,
        2,
        libc::O_CLOEXEC as u64,
    ]);
    // The high 32 bits are not compared, by either program.
    let high: Vec<u64> = values.iter().map(|v| v | 1 << 32).collect();
    values.extend(high);
    for kind in ThreadKind::ALL {
        let (ours, reference) = (compile::compile(kind).unwrap(), seccompiler_program(kind));
        let checked = compile::allowed_syscalls(rules::rules(kind)).unwrap();
        let mut nrs: Vec<u32> = (0..600).collect();
        nrs.extend([0x4000_0000, 0x4000_0001, 0x4000_0000 | 16, u32::MAX]);
        for nr in nrs {
            let mut cases = vec![[0u64; 6]];
            if matches!(checked.get(&nr), Some(Allowed::OneOf(_))) {
                for arg in 0..3 {
                    cases.extend(values.iter().map(|&v| {
                        let mut args = [0u64; 6];
                        args[arg] = v;
                        args
                    }));
                }
            }
            for args in cases {
                let (action, _) = run(&ours, nr, AUDIT_ARCH_X86_64, args);
                let (expected, _) = run(&reference, nr, AUDIT_ARCH_X86_64, args);
                assert_eq!(action, expected, "{} nr {nr} args {args:x?}", kind.name());
                assert!(action == ALLOW || action == TRAP);
            }
        }
        // A 32-bit syscall (`int 0x80`) is killed by both.
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(run(&ours, 0, AUDIT_ARCH_I386, [0; 6]).0, KILL_PROCESS);
        assert_eq!(run(&reference, 0, AUDIT_ARCH_I386, [0; 6]).0, KILL_PROCESS);
    }
}

#[test]
fn a_program_longer_than_a_conditional_jump_reaches_decides_as_its_table_says() {
    // ember's programs are short enough for every leaf to reach the shared returns; a table
    // of 500 syscalls, one in seven with argument checks, needs long jumps and returns of the
    // leaves' own.
    let mut table = BTreeMap::new();
    for nr in (0..1000u32).step_by(2) {
        let allowed = if nr % 7 == 0 {
            let equals = |value| Condition::Equals { arg: 1, value };
            let clear = Condition::Clear { arg: 2, mask: 0x40 };
            Allowed::OneOf(vec![equals(nr), equals(nr + 1), clear, equals(3)])
        } else {
            Allowed::Any
        };
        table.insert(nr, allowed);
    }
    let program = compile::program(&table);
    assert!(program.len() > 1000, "{} instructions", program.len());
    let holds = |c: &Condition, args: &[u64; 6]| match *c {
        Condition::Equals { arg, value } => args[usize::from(arg)] as u32 == value,
        Condition::Clear { arg, mask } => args[usize::from(arg)] as u32 & mask == 0,
    };
    for nr in 0..1100u32 {
        for (a1, a2) in [
            (0, 0),
            (nr, 0x40),
            (nr + 1, 0x40),
            (3, 0x40),
            (5, 0x40),
            (5, 0),
        ] {
            let args = [0, u64::from(a1), a2, 0, 0, 0];
            let expected = match table.get(&nr) {
                None => TRAP,
                Some(Allowed::Any) => ALLOW,
                Some(Allowed::OneOf(c)) if c.iter().any(|c| holds(c, &args)) => ALLOW,
                Some(Allowed::OneOf(_)) => TRAP,
            };
            let (action, _) = run(&program, nr, AUDIT_ARCH_X86_64, args);
            assert_eq!(action, expected, "nr {nr} args {args:x?}");
        }
    }
}

#[test]
fn a_syscall_the_filter_does_not_list_costs_a_binary_search_not_a_walk() {
    // The kernel runs the filter on every syscall number when it takes it in: what it costs is
    // the length of the path of the syscalls the filter refuses.
    for kind in ThreadKind::ALL {
        let program = built_in_program(kind);
        let listed = compile::allowed_syscalls(rules::rules(kind)).unwrap();
        let depth = usize::BITS - (listed.len() - 1).leading_zeros();
        let most = (0..600u32)
            .filter(|nr| !listed.contains_key(nr))
            .map(|nr| run(program, nr, AUDIT_ARCH_X86_64, [0; 6]).1)
            .max()
            .unwrap();
        // The architecture check and the number's load, a comparison a level (and a long
        // jump on the way, in programs longer than a conditional jump reaches), then the
        // leaf's comparison and a return.
        let bound = 3 + depth as usize + 1 + 2;
        assert!(most <= bound, "{}: {most} > {bound}", kind.name());
        // The vCPU's KVM_RUN, checked at each of its exits to ember, is its first ioctl.
        if kind == ThreadKind::Vcpu {
            let kvm_run = 0xae80;
            let (action, steps) = run(
                program,
                libc::SYS_ioctl as u32,
                AUDIT_ARCH_X86_64,
                [0, kvm_run, 0, 0, 0, 0],
            );
            assert_eq!(action, ALLOW);
            // Then the request's load and its comparison, the first.
            assert!(steps <= bound + 2, "KVM_RUN: {steps} instructions");
        }
    }
}

#[test]
fn every_built_in_filter_is_small_and_allows_the_std_runtime() {
    for kind in ThreadKind::ALL {
        let program = built_in_program(kind);
        // The kernel's limit is 4096 instructions; stay far below it.
        assert!(
            (10..2048).contains(&program.len()),
            "{}: {} instructions",
            kind.name(),
            program.len()
        );
        let names: Vec<_> = rules::rules(kind).map(|r| r.name).collect();
        for needed in [
            "SYS_futex",
            "SYS_mmap",
            "SYS_munmap",
            "SYS_exit",
            "SYS_write",
        ] {
            assert!(names.contains(&needed), "{}: {needed}", kind.name());
        }
        // The debug trigger's syscall and thread creation are no thread's.
        for forbidden in ["SYS_getppid", "SYS_clone", "SYS_clone3", "SYS_execve"] {
            assert!(!names.contains(&forbidden), "{}: {forbidden}", kind.name());
        }
    }
}

#[test]
fn only_the_vsock_and_vhost_user_threads_open_sockets_and_only_unix_ones() {
    for kind in ThreadKind::ALL {
        let socket: Vec<_> = rules::rules(kind)
            .filter(|r| r.nr == libc::SYS_socket)
            .collect();
        match kind {
            ThreadKind::Vsock | ThreadKind::VhostUser => {
                assert!(
                    matches!(socket[..], [&Rule { args: Args::Arg0(&[f]), .. }] if f == libc::AF_UNIX as u64)
                );
            }
            _ => assert!(socket.is_empty(), "{}", kind.name()),
        }
    }
}

#[test]
fn a_syscall_allowed_with_any_arguments_by_one_rule_has_no_conditions() {
    let rules = [
        Rule {
            nr: libc::SYS_ioctl,
            name: "SYS_ioctl",
            args: Args::Arg1(&[1, 2]),
        },
        Rule {
            nr: libc::SYS_ioctl,
            name: "SYS_ioctl",
            args: Args::Arg1(&[2, 3]),
        },
        Rule {
            nr: libc::SYS_fcntl,
            name: "SYS_fcntl",
            args: Args::Arg1(&[3]),
        },
        Rule {
            nr: libc::SYS_fcntl,
            name: "SYS_fcntl",
            args: Args::Any,
        },
    ];
    let map = compile::allowed_syscalls(rules.iter()).unwrap();
    let equals = |value| Condition::Equals { arg: 1, value };
    let ioctl = Allowed::OneOf(vec![equals(1), equals(2), equals(3)]);
    assert_eq!(map[&(libc::SYS_ioctl as u32)], ioctl);
    assert_eq!(map[&(libc::SYS_fcntl as u32)], Allowed::Any);
}

#[test]
fn a_value_wider_than_32_bits_is_refused_with_its_rule_named() {
    let rules = [Rule {
        nr: libc::SYS_ioctl,
        name: "SYS_ioctl",
        args: Args::Arg1(&[1 << 33]),
    }];
    let err = compile::allowed_syscalls(rules.iter())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SYS_ioctl") && err.contains("0x200000000"),
        "{err}"
    );
}

#[test]
fn the_sigsys_line_names_syscalls_and_numbers() {
    assert_eq!(rules::syscall_name(libc::SYS_getppid), Some("SYS_getppid"));
    assert_eq!(rules::syscall_name(libc::SYS_ioctl), Some("SYS_ioctl"));
    assert_eq!(rules::syscall_name(100_000), None);
}

/// A filter file for this test, in the temporary directory.
fn filter_file(name: &str, json: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ember-seccomp-{}-{name}", std::process::id()));
    std::fs::write(&path, json).unwrap();
    path
}

fn json_filters(kinds: &[&str]) -> String {
    let one = r#"{"default_action": "trap", "filter_action": "allow",
                  "filter": [{"syscall": "exit_group"}, {"syscall": "futex"}]}"#;
    let body: Vec<String> = kinds.iter().map(|k| format!("\"{k}\": {one}")).collect();
    format!("{{{}}}", body.join(","))
}

#[test]
fn a_filter_file_has_one_seccompiler_filter_per_thread_kind() {
    let all: Vec<&str> = ThreadKind::ALL.map(ThreadKind::name).to_vec();
    let file = filter_file("all", &json_filters(&all));
    let programs = from_file(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(programs.len(), ThreadKind::ALL.len());

    let file = filter_file("missing", &json_filters(&all[1..]));
    let err = from_file(&file).unwrap_err().to_string();
    std::fs::remove_file(&file).unwrap();
    assert!(err.contains("no filter for the vmm threads"), "{err}");

    let mut more = all.clone();
    more.push("balloon");
    let file = filter_file("more", &json_filters(&more));
    let err = from_file(&file).unwrap_err().to_string();
    std::fs::remove_file(&file).unwrap();
    assert!(
        err.contains("`balloon`, which is no ember thread kind"),
        "{err}"
    );

    // Firecracker's compiled filters are bincode, not JSON: the error says what to give.
    let file = filter_file("bincode", "\u{1}\u{0}\u{0}binary");
    let err = from_file(&file).unwrap_err().to_string();
    std::fs::remove_file(&file).unwrap();
    assert!(
        err.contains("not a seccompiler JSON filter description"),
        "{err}"
    );

    let err = from_file(std::path::Path::new("/nonexistent/f.json")).unwrap_err();
    assert!(crate::error_chain(&err).contains("No such file"), "{err}");
}

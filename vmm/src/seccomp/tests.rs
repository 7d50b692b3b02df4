use super::rules::{Args, Rule};
use super::*;

#[test]
fn the_built_in_programs_are_what_seccompiler_compiles_from_the_table_today() {
    // build.rs compiled them; a table changed since (or a build that did not rerun) fails here.
    let built_in = built_in();
    assert_eq!(built_in.len(), ThreadKind::ALL.len());
    for kind in ThreadKind::ALL {
        let compiled = compile::compile(kind, ARCH).unwrap();
        assert!(
            built_in[&kind] == compiled.as_slice(),
            "{}: the embedded filter is not the table's",
            kind.name()
        );
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
    let map = compile::syscall_rules(rules.iter()).unwrap();
    assert_eq!(map[&libc::SYS_ioctl].len(), 2);
    assert!(map[&libc::SYS_fcntl].is_empty());
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

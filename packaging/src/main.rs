//! Writes the files ember's Debian package generates from the clap definitions in
//! `vmm::cli`: a man page for `ember` and one per subcommand (`clap_mangen`, with sections for
//! the console keys, exit statuses, environment and the package's files), one for
//! `ember-jailer` (from `jailer::cli`), and bash, zsh and fish completions (`clap_complete`). `resources/build-deb.sh` runs it:
//!
//! ```text
//! cargo run --release -p packaging -- OUT_DIR DATE
//! ```
//!
//! writes `OUT_DIR/man/*.1` and `OUT_DIR/completions/{ember.bash,_ember,ember.fish}`; DATE
//! (YYYY-MM-DD) goes in the man pages' footer, so that a package built twice from one commit
//! is the same. A separate binary, so none of this ships in `ember`.

use std::fs;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};
use vmm::cli::{CONSOLE_KEYS, Cli, EXAMPLES, EXIT_STATUSES};
use vmm::run::RunCli;

/// Where the ember-guest-kernel package installs its kernel (resources/build-kernel-deb.sh),
/// which the example config boots.
const GUEST_KERNEL: &str = "/usr/lib/ember/vmlinux";

/// The files the package installs that a user of `ember` may look for, with what each is.
const FILES: &[(&str, &str)] = &[
    (
        "/etc/ember/NAME.json",
        "the microVM that ember@NAME.service runs: a Firecracker config file (--config-file)",
    ),
    (
        "/run/ember/NAME/api.sock",
        "the API socket of ember@NAME.service (Firecracker's REST API)",
    ),
    (
        "/var/lib/ember/",
        "where ember@.service may write: disk images of the VMs it runs",
    ),
    (
        GUEST_KERNEL,
        "the guest kernel of the optional ember-guest-kernel package",
    ),
    (
        "/usr/share/doc/ember/examples/vm.json",
        "an example config file for ember@.service",
    ),
];

/// The shells completions are written for, each with the file name its directory expects.
const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "ember.bash"),
    (Shell::Zsh, "_ember"),
    (Shell::Fish, "ember.fish"),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, date] = args.as_slice() else {
        eprintln!("usage: packaging OUT_DIR DATE (YYYY-MM-DD, for the man pages' footer)");
        std::process::exit(2);
    };
    if let Err(err) = generate(Path::new(out), date) {
        eprintln!("packaging: error: {err}");
        std::process::exit(1);
    }
}

/// Writes the man pages and completions under `out`.
fn generate(out: &Path, date: &str) -> Result<(), String> {
    let cmd = Cli::command();
    // `ember help` is clap's: a page of its own would only say what --help does.
    let mut man_cmd = cmd.clone().disable_help_subcommand(true);
    // Sets each subcommand's display name ("ember-run") and usage line ("ember run").
    man_cmd.build();
    let man_dir = out.join("man");
    create_dir(&man_dir)?;
    // `ember run`'s page is the image form's (`ember run IMAGE`), whose description says what
    // `ember run` without an image is.
    let mut run_cmd = RunCli::command().disable_help_subcommand(true);
    run_cmd.build();
    let run_page = run_cmd.find_subcommand("run").cloned();
    let pages = man_cmd
        .get_subcommands()
        .map(|page| match (&run_page, page.get_name()) {
            (Some(run), "run") => run,
            _ => page,
        });
    // Every page's header names ember and its version, not the subcommand with none ("pull ").
    let source = format!("ember {}", man_cmd.get_version().unwrap_or_default());
    for page in std::iter::once(&man_cmd).chain(pages) {
        // NAME reads "ember - boot a Linux kernel ...", not "ember - ember: boot ...".
        let about = page
            .get_about()
            .map(ToString::to_string)
            .unwrap_or_default();
        let about = about.trim_start_matches("ember: ").to_owned();
        let man = Man::new(page.clone().about(about))
            .date(date)
            .source(source.clone());
        write(&man_dir.join(man.get_filename()), &man_page(&man, page)?)?;
    }
    let jailer = jailer::Cli::command();
    let about = jailer
        .get_about()
        .map(ToString::to_string)
        .unwrap_or_default();
    let about = about.trim_start_matches("ember-jailer: ").to_owned();
    let man = Man::new(jailer.about(about)).date(date);
    let mut page = Vec::new();
    man.render(&mut page)
        .map_err(|e| format!("rendering the man page of ember-jailer: {e}"))?;
    write(&man_dir.join(man.get_filename()), &page)?;
    let completion_dir = out.join("completions");
    create_dir(&completion_dir)?;
    for (shell, file) in COMPLETIONS {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "ember", &mut script);
        write(&completion_dir.join(file), &script)?;
    }
    Ok(())
}

/// One page: clap_mangen's sections for what clap knows, then ember's own sections in place
/// of clap_mangen's EXTRA (which would repeat `--help`'s plain-text footer as is).
fn man_page(man: &Man, cmd: &Command) -> Result<Vec<u8>, String> {
    let mut page = Vec::new();
    let render = |page: &mut Vec<u8>| -> std::io::Result<()> {
        man.render_title(page)?;
        man.render_name_section(page)?;
        man.render_synopsis_section(page)?;
        man.render_description_section(page)?;
        man.render_options_section(page)?;
        if cmd.has_subcommands() {
            man.render_subcommands_section(page)?;
        }
        // No VERSION section: clap_mangen would print "vv0.1.0" for ember's "v0.1.0"
        // (Firecracker's spelling), and the footer names the version already.
        ember_sections(cmd).to_writer(page)
    };
    render(&mut page).map_err(|e| format!("rendering the man page of {}: {e}", cmd.get_name()))?;
    Ok(page)
}

/// CONSOLE KEYS, EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES and SEE ALSO.
fn ember_sections(cmd: &Command) -> Roff {
    let mut roff = Roff::new();
    let table = |roff: &mut Roff, title: &str, rows: &[(&str, &str)]| {
        roff.control("SH", [title]);
        for (key, meaning) in rows {
            roff.control("TP", [])
                .text([bold(*key)])
                .text([roman(*meaning)]);
        }
    };
    table(&mut roff, "CONSOLE KEYS", CONSOLE_KEYS);
    roff.control("PP", []).text([roman(
        "They work when stdin is a terminal; every other key, Ctrl-C included, goes to the guest.",
    )]);
    let this = cmd.get_display_name().unwrap_or(cmd.get_name());
    let image_form = this == "ember-run";
    if image_form {
        table(&mut roff, "EXIT STATUS", vmm::run::EXIT_STATUSES);
        table(&mut roff, "ENVIRONMENT", vmm::run::ENVIRONMENT);
        roff.control("SH", ["FILES"]);
    } else {
        table(&mut roff, "EXIT STATUS", EXIT_STATUSES);
        roff.control("SH", ["ENVIRONMENT"])
            .text([roman(
                "A run is described by its flags or its config file alone. The image commands \
                 (pull, images, rmi, image prune) keep their cache in $EMBER_CACHE_DIR, else \
                 $XDG_CACHE_HOME/ember, else ~/.cache/ember.",
            )])
            .control("SH", ["FILES"]);
    }
    for (path, what) in FILES {
        roff.control("TP", [])
            .text([italic(*path)])
            .text([roman(*what)]);
    }
    roff.control("SH", ["EXAMPLES"]);
    let examples = if image_form {
        vmm::run::EXAMPLES
    } else {
        EXAMPLES
    };
    for example in examples {
        roff.control("nf", [])
            .text([roman(*example)])
            .control("fi", []);
    }
    let others: String = std::iter::once("ember".to_owned())
        .chain(
            Cli::command()
                .get_subcommands()
                .map(|s| format!("ember-{}", s.get_name())),
        )
        .filter(|page| page != this)
        .map(|page| format!("{page}(1), "))
        .collect();
    roff.control("SH", ["SEE ALSO"]).text([roman(format!(
        "{others}systemctl(1); the README in /usr/share/doc/ember/."
    ))]);
    roff
}

fn create_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write(path: &PathBuf, data: &[u8]) -> Result<(), String> {
    fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(name: &str) -> PathBuf {
        let out =
            std::env::temp_dir().join(format!("ember-packaging-{}-{name}", std::process::id()));
        generate(&out, "2026-01-02").unwrap();
        out
    }

    #[test]
    fn man_pages_list_the_flags_exit_statuses_and_files_for_ember_and_each_subcommand() {
        let out = generated("man");
        for page in ["ember.1", "ember-run.1"] {
            let text = fs::read_to_string(out.join("man").join(page)).unwrap();
            assert!(
                text.contains(&format!(
                    "2026-01-02 \"ember v{}\"",
                    env!("CARGO_PKG_VERSION")
                )),
                "{page}: no date and version"
            );
            for needle in [
                "\\-\\-memory",
                ".SH \"EXIT STATUS\"",
                "panicked",
                "128+N",
                ".SH ENVIRONMENT",
                "/etc/ember/NAME.json",
                "Ctrl\\-A x",
            ] {
                assert!(text.contains(needle), "{page} lacks {needle}:\n{text}");
            }
        }
        let root = fs::read_to_string(out.join("man/ember.1")).unwrap();
        assert!(root.contains("\\-\\-config\\-file"), "{root}");
        // ember run's page is the image form's, and says what the older form is.
        let run = fs::read_to_string(out.join("man/ember-run.1")).unwrap();
        for needle in [
            "ember run",
            "<\\fIIMAGE\\fR>",
            "COMMAND",
            "\\-\\-rootfs\\-size",
            "\\-\\-entrypoint",
            "\\-\\-volume",
            "not found",
            "EMBER_KERNEL",
            "TMPDIR",
            "without an image is the same as",
            "alpine",
        ] {
            assert!(run.contains(needle), "ember-run.1 lacks {needle}:\n{run}");
        }
        assert!(root.contains("ember\\-run(1)"), "{root}");
        let jailer = fs::read_to_string(out.join("man/ember-jailer.1")).unwrap();
        assert!(
            jailer.contains("ember\\-jailer \\- start ember in a jail"),
            "{jailer}"
        );
        for needle in [
            "\\-\\-exec\\-file",
            "\\-\\-new\\-pid\\-ns",
            "firecracker.socket",
        ] {
            assert!(
                jailer.contains(needle),
                "ember-jailer.1 lacks {needle}:\n{jailer}"
            );
        }
        fs::remove_dir_all(out).unwrap();
    }

    #[test]
    fn the_example_config_is_one_ember_reads_and_boots_the_kernel_package() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/deb/examples/vm.json");
        let cfg = vmm::config::load_config_file(&example).unwrap();
        assert_eq!(cfg.boot_source.unwrap().kernel_image_path, GUEST_KERNEL);
    }

    #[test]
    fn completions_offer_the_flags_in_every_shell() {
        let out = generated("completions");
        for file in ["ember.bash", "_ember", "ember.fish"] {
            let text = fs::read_to_string(out.join("completions").join(file)).unwrap();
            assert!(text.contains("memory"), "{file}:\n{text}");
        }
        fs::remove_dir_all(out).unwrap();
    }
}

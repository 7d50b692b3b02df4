//! `ember pull`, `ember images`, `ember rmi` and `ember image prune`: the image cache's
//! commands. The work is the `oci` crate's; this module only parses and prints.

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// The image commands, flattened into ember's subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Fetch an image into the cache and build its root filesystem.
    ///
    /// IMAGE is a registry reference (alpine, docker.io/library/alpine:3.20,
    /// localhost:5000/app@sha256:...), oci:DIR[:TAG] (an OCI image layout),
    /// oci-archive:FILE[:TAG], docker-archive:FILE (docker save), or a path starting with /,
    /// ./ or ../ to a layout directory or archive file.
    Pull(PullArgs),
    /// List the cached images: reference, digest and size.
    Images,
    /// Remove cached image references (their data goes at the next `ember image prune`).
    Rmi {
        /// References as `ember images` lists them, or as pulled (`alpine`).
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
    },
    /// Manage the image cache.
    Image {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

/// `ember image ...`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove blobs and root filesystems no cached reference needs, and leftovers of
    /// interrupted pulls.
    Prune,
}

/// `ember pull`'s arguments.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image (see `ember pull --help`).
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Reach this registry (HOST or HOST:PORT) over plain HTTP instead of HTTPS (localhost and
    /// 127.0.0.1 always are). Repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
}

/// Runs an image command: exit status 0, or 1 with the error on stderr.
pub fn run(command: &ImageCommand) -> ExitCode {
    match execute(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ember: error: {}", crate::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn execute(command: &ImageCommand) -> Result<(), oci::Error> {
    let mut opts = oci::PullOptions::default();
    match command {
        ImageCommand::Pull(args) => {
            opts.insecure_registries = args.insecure_registry.clone();
            let image = oci::pull(&args.image, &opts)?;
            println!("{}: {}", args.image, image.digest);
            println!("root filesystem: {}", image.rootfs.display());
        }
        ImageCommand::Images => {
            let images = oci::images(&opts)?;
            let width = images
                .iter()
                .map(|(n, _)| n.len())
                .max()
                .unwrap_or(0)
                .max(9);
            println!("{:width$}  {:19}  SIZE", "REFERENCE", "DIGEST");
            for (name, entry) in images {
                let short: String = entry.digest.chars().take(19).collect();
                println!("{name:width$}  {short:19}  {}", human_size(entry.size));
            }
        }
        ImageCommand::Rmi { references } => {
            for reference in references {
                let (name, entry) = oci::remove(reference, &opts)?;
                println!("untagged {name} ({})", entry.digest);
            }
        }
        ImageCommand::Image {
            command: CacheCommand::Prune,
        } => {
            let (files, bytes) = oci::prune(&opts)?;
            println!("removed {files} files, {} freed", human_size(bytes));
        }
    }
    Ok(())
}

/// `1.5 MiB`-style sizes.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(50 << 20), "50.0 MiB");
    }
}

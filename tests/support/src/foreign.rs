//! The release binaries built for another CPU (`scripts/check-static` builds
//! `target/<triple>/release/*` for every target of scripts/binaries.sh), run on this host
//! through Debian's qemu-user-static. qemu is invoked explicitly, `qemu-aarch64-static
//! ./binary`: binfmt_misc need not be registered (it is not in containers).
//!
//! `PPH_TARGET=aarch64-unknown-linux-musl` makes [`crate::bin`] return a two-line wrapper that
//! runs the arm64 release binary under qemu, so a whole test file runs against it:
//! `PPH_TARGET=aarch64-unknown-linux-musl cargo test --test cli` (scripts/test does).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::Res;

/// The arm64 target that scripts/check-static builds.
pub const AARCH64: &str = "aarch64-unknown-linux-musl";

/// `target/<triple>/release` ($CARGO_TARGET_DIR if set).
pub fn release_dir(triple: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cluster::repo_root().join("target"));
    target.join(triple).join("release")
}

/// The qemu-user-static emulator for `triple`'s CPU, or None when the host has that CPU.
pub fn qemu_for(triple: &str) -> Res<Option<PathBuf>> {
    let cpu = triple.split('-').next().unwrap_or_default();
    if cpu == std::env::consts::ARCH {
        return Ok(None);
    }
    let name = format!("qemu-{cpu}-static");
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(&name);
        if p.is_file() {
            return Ok(Some(p));
        }
    }
    Err(format!(
        "{name} not found: scripts/setup installs qemu-user-static"
    ))
}

/// The release binary `name` of `triple`: Err(why) when it is missing, or older than the
/// sources (run scripts/check-static).
pub fn release_bin(triple: &str, name: &str) -> Res<PathBuf> {
    let p = release_dir(triple).join(name);
    if !p.is_file() {
        return Err(format!(
            "{} not built: run scripts/check-static",
            p.display()
        ));
    }
    if crate::cluster::mtime(&p) < crate::cluster::newest_source() {
        return Err(format!(
            "{} is older than the sources: run scripts/check-static",
            p.display()
        ));
    }
    Ok(p)
}

/// A command running the release binary `name` of `triple` on this host (under qemu if the
/// CPU differs). The environment is inherited as with [`Command::new`]: qemu passes it on.
pub fn command(triple: &str, name: &str) -> Res<Command> {
    let exe = release_bin(triple, name)?;
    Ok(match qemu_for(triple)? {
        None => Command::new(exe),
        Some(qemu) => {
            let mut c = Command::new(qemu);
            c.arg(exe);
            c
        }
    })
}

/// An executable file that runs the release binary `name` of `triple` with the arguments it
/// is given: the binary itself on the same CPU, else `target/<triple>/qemu-run/<name>`, a
/// `#!/bin/sh` wrapper that execs qemu (same PID, signals reach the binary).
pub fn runnable(triple: &str, name: &str) -> Res<PathBuf> {
    let exe = release_bin(triple, name)?;
    let Some(qemu) = qemu_for(triple)? else {
        return Ok(exe);
    };
    let quote = |p: &Path| -> Res<String> {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", p.display()))?;
        if s.contains('\'') {
            return Err(format!("{s}: a quote in the path"));
        }
        Ok(format!("'{s}'"))
    };
    let script = format!(
        "#!/bin/sh\nexec {} {} \"$@\"\n",
        quote(&qemu)?,
        quote(&exe)?
    );
    let dir = release_dir(triple).with_file_name("qemu-run");
    let path = dir.join(name);
    // Written once per process and only when it differs: a file being written cannot be
    // executed (ETXTBSY), so never rewrite one that other tests may be running.
    static WRITING: Mutex<()> = Mutex::new(());
    let _guard = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    if fs::read_to_string(&path).ok().as_deref() != Some(script.as_str()) {
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        fs::write(&tmp, &script).map_err(|e| format!("{}: {e}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

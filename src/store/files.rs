//! File modes under the data dir: the database (with its `-wal`, `-shm` and
//! `-journal`) holds stored request headers and webhook secrets, the CA dir
//! holds the CA private key. Everything ezthrottle creates there is 0600
//! (directories 0700) whatever the process umask, and at every start the
//! modes are checked again: a database written by an older version (0644
//! under the usual umask 022) is fixed with a warning.
//!
//! Only paths ezthrottle creates are changed (the data dir itself, the
//! database files, `ca/` and what is in it): the data dir might be a mount
//! point shared with other things, which are left alone.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file ezthrottle creates under the data dir.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory ezthrottle creates under the data dir.
pub const DIR_MODE: u32 = 0o700;

/// The database file name under the data dir.
pub const DB_FILE: &str = "ezthrottle.db";
/// Files SQLite keeps beside the database.
pub const DB_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// What the start-up check changed (each also logged as a warning).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fixed {
    /// `(path, old mode, new mode)`
    pub changed: Vec<(PathBuf, u32, u32)>,
}

/// Create `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    // `mode` is filtered by the umask; a umask never adds bits, but set it
    // exactly in case the directory was created by someone else meanwhile.
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Create `path` empty with mode 0600 if it does not exist (an existing file
/// is left as it is). SQLite creates its `-wal` and `-shm` with the mode of
/// the database file, so creating the database this way covers them too.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bring one existing path to `want` if it grants anything to group or
/// others; symlinks are not followed (their target is not ours).
fn fix(path: &Path, want: u32, fixed: &mut Fixed) {
    fix_as(path, want, fixed, false)
}

/// [`fix`]; `mount_point`: the data dir itself, which may be a volume root
/// owned by someone else (Kubernetes `fsGroup`): not being allowed to change
/// it is expected there and logged at `info` (the files inside are what
/// hold secrets, and they are ours).
fn fix_as(path: &Path, want: u32, fixed: &mut Fixed, mount_point: bool) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    match fs::set_permissions(path, fs::Permissions::from_mode(want)) {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                old_mode = format!("{mode:04o}"),
                new_mode = format!("{want:04o}"),
                "file under the data dir was readable by others; fixed"
            );
            fixed.changed.push((path.to_path_buf(), mode, want));
        }
        Err(e) if mount_point && e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::info!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "the data dir is not ours to chmod (a volume root?); the files in it are 0600"
            )
        }
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            error = %e,
            "file under the data dir is readable by others and its mode cannot be changed"
        ),
    }
}

/// Check (and fix) the modes of everything ezthrottle keeps under
/// `data_dir`: the dir itself, the database files and the `ca/` dir with
/// its files. Never fails: a mode that cannot be changed is a warning.
pub fn secure_data_dir(data_dir: &Path) -> Fixed {
    let mut fixed = Fixed::default();
    fix_as(data_dir, DIR_MODE, &mut fixed, true);
    let db = data_dir.join(DB_FILE);
    fix(&db, FILE_MODE, &mut fixed);
    for side in DB_SIDE_FILES {
        fix(
            &data_dir.join(format!("{DB_FILE}{side}")),
            FILE_MODE,
            &mut fixed,
        );
    }
    // `ca/`: the local CA; `tls/`: the upstream trust bundle.
    for sub in ["ca", "tls"] {
        let dir = data_dir.join(sub);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        fix(&dir, DIR_MODE, &mut fixed);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let want = if path.is_dir() { DIR_MODE } else { FILE_MODE };
                fix(&path, want, &mut fixed);
            }
        }
    }
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn loose_modes_are_fixed_and_foreign_files_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        create_private_dir(&data).unwrap();
        assert_eq!(mode(&data), DIR_MODE);
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        let db = data.join(DB_FILE);
        fs::write(&db, b"x").unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        let wal = data.join("ezthrottle.db-wal");
        fs::write(&wal, b"x").unwrap();
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o666)).unwrap();
        fs::create_dir(data.join("ca")).unwrap();
        fs::set_permissions(data.join("ca"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(data.join("ca/ca.pem"), b"x").unwrap();
        fs::set_permissions(data.join("ca/ca.pem"), fs::Permissions::from_mode(0o644)).unwrap();
        let other = data.join("notes.txt");
        fs::write(&other, b"x").unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o644)).unwrap();

        let fixed = secure_data_dir(&data);
        assert_eq!(fixed.changed.len(), 5, "{fixed:?}");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);
        assert_eq!(mode(&data.join("ca")), 0o700);
        assert_eq!(mode(&data.join("ca/ca.pem")), 0o600);
        assert_eq!(mode(&other), 0o644, "not ours");
        assert!(secure_data_dir(&data).changed.is_empty(), "idempotent");

        let fresh = data.join("fresh");
        create_private_file(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        fs::write(&fresh, b"kept").unwrap();
        create_private_file(&fresh).unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), b"kept");
    }
}

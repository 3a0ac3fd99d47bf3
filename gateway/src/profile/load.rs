//! Reading profile files: one file, the files a path stands for, and every profile under
//! several paths with their ids checked for uniqueness.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{parse, Profile, ProfileError, ProfileErrors};

/// Reads and validates one profile file.
pub fn load_file(path: &Path) -> Result<Profile, ProfileErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ProfileErrors(vec![ProfileError {
            file: path.to_path_buf(),
            line: 1,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// The profile files a path stands for: the file itself, or every `*.toml` in a directory
/// (sorted, not recursive).
pub fn files_in(path: &Path) -> Result<Vec<PathBuf>, ProfileErrors> {
    let fail = |message: String| {
        ProfileErrors(vec![ProfileError {
            file: path.to_path_buf(),
            line: 1,
            message,
        }])
    };
    if path.is_dir() {
        let entries =
            std::fs::read_dir(path).map_err(|e| fail(format!("cannot list the directory: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        Ok(files)
    } else if path.exists() {
        Ok(vec![path.to_path_buf()])
    } else {
        Err(fail("no such file or directory".into()))
    }
}

/// Loads every profile under `paths`, checking ids are unique across them. Returns all
/// problems at once.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Profile>, ProfileErrors> {
    let mut profiles = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match files_in(path) {
            Ok(files) => {
                for f in files {
                    match load_file(&f) {
                        Ok(p) => profiles.push(p),
                        Err(ProfileErrors(mut e)) => errors.append(&mut e),
                    }
                }
            }
            Err(ProfileErrors(mut e)) => errors.append(&mut e),
        }
    }
    errors.extend(duplicate_ids(&profiles));
    if errors.is_empty() {
        Ok(profiles)
    } else {
        Err(ProfileErrors(errors))
    }
}

/// Errors for profiles sharing an id.
pub fn duplicate_ids(profiles: &[Profile]) -> Vec<ProfileError> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    let mut errors = Vec::new();
    for p in profiles {
        if let Some(first) = seen.insert(&p.id, &p.source) {
            errors.push(ProfileError {
                file: p.source.clone(),
                line: 1,
                message: format!(
                    "profile id `{}` is already used by {}",
                    p.id,
                    first.display()
                ),
            });
        }
    }
    errors
}

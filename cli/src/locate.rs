//! Finding a group's partition stores: `<state_dir>/<group>/<topic>/<partition>.sqlite`, with
//! errors that say what is there instead.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A group's folder of stores, checked to exist.
#[derive(Debug)]
pub(crate) struct GroupDir {
    pub(crate) group: String,
    pub(crate) dir: PathBuf,
}

impl GroupDir {
    pub(crate) fn open(state_dir: &Path, group: &str) -> Result<Self> {
        if !state_dir.is_dir() {
            return Err(Error::Input(format!(
                "state dir {} does not exist (or is not a directory)",
                state_dir.display()
            )));
        }
        let dir = state_dir.join(group);
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "no group {group:?} in {} (groups there: {})",
                state_dir.display(),
                listing(&subdirs(state_dir))
            )));
        }
        Ok(Self {
            group: group.to_owned(),
            dir,
        })
    }

    /// The topics with stores, sorted.
    pub(crate) fn topics(&self) -> Vec<String> {
        subdirs(&self.dir)
    }

    /// `topic`'s partition stores, by partition; only `partition` when given.
    pub(crate) fn partitions(
        &self,
        topic: &str,
        partition: Option<i32>,
    ) -> Result<Vec<(i32, PathBuf)>> {
        let dir = self.dir.join(topic);
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "group {:?} has no stores of topic {topic:?} (topics there: {})",
                self.group,
                listing(&self.topics())
            )));
        }
        let mut files: Vec<(i32, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| Error::Input(format!("cannot list {}: {e}", dir.display())))?
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let p = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".sqlite")?
                    .parse()
                    .ok()?;
                Some((p, path))
            })
            .filter(|(p, _)| partition.is_none_or(|want| *p == want))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Input(match partition {
                Some(p) => format!("no store of {topic}/{p} in {}", dir.display()),
                None => format!("no partition stores in {}", dir.display()),
            }));
        }
        Ok(files)
    }
}

fn subdirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn listing(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

//! The bulk job's checkpoint: a small JSON file, replaced atomically after every batch.

use std::path::{Path as FsPath, PathBuf};

use serde::{Deserialize, Serialize};

use super::migrate::MigrationCounts;
use crate::error::{Error, Result};

/// What a job has done so far: every object whose path sorts at or before `after` is done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// The job this is for: the inner store and prefix (a checkpoint of another job is refused).
    pub(crate) job: String,
    pub(crate) after: Option<String>,
    pub(crate) counts: MigrationCounts,
    /// Objects that failed, with why (kept so the final report names them all).
    pub(crate) failures: Vec<(String, String)>,
}

impl Checkpoint {
    /// The checkpoint in `file` for `job`, or a fresh one if there is none.
    pub(crate) fn load(file: &FsPath, job: &str) -> Result<Self> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    job: job.to_owned(),
                    ..Self::default()
                });
            }
            Err(e) => return Err(e.into()),
        };
        let checkpoint: Self = serde_json::from_str(&text).map_err(|e| {
            Error::invalid_input(format!("{} is not a checkpoint: {e}", file.display()))
        })?;
        if checkpoint.job != job {
            return Err(Error::invalid_input(format!(
                "{} is the checkpoint of another job ({}); give another file",
                file.display(),
                checkpoint.job
            )));
        }
        Ok(checkpoint)
    }

    /// Replaces `file` with this checkpoint: written beside it, synced, renamed over it, so a
    /// crash leaves the old checkpoint or the new one.
    pub(crate) fn save(&self, file: &FsPath) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::configuration(format!("cannot encode the checkpoint: {e}")))?;
        let temp = temp_path(file);
        {
            use std::io::Write as _;
            let mut out = std::fs::File::create(&temp)?;
            out.write_all(text.as_bytes())?;
            out.sync_all()?;
        }
        std::fs::rename(&temp, file)?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename itself is durable once the directory is synced (where that exists).
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

fn temp_path(file: &FsPath) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    file.with_file_name(name)
}

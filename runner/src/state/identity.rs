//! A node's identity, and the tag file that records which identity a kept state dir was made by.
//!
//! The identity is the node's VM derivation when the plan names it; otherwise the start script's path and a hash of
//! its content (a store path's content names every store path the VM uses, so it changes with the configuration).

use std::fmt;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use testrig_bridge::sha256_hex;

/// The format tag of the tag file.
pub const TAG_FORMAT: &str = "testrig-state/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_script_sha256: Option<String>,
}

impl NodeIdentity {
    /// The identity of a node given its `drv` (if the plan has one) and its resolved start script.
    pub fn of(drv: Option<&str>, start_script: &Path) -> std::io::Result<Self> {
        if let Some(drv) = drv {
            return Ok(NodeIdentity {
                drv: Some(drv.to_owned()),
                start_script: None,
                start_script_sha256: None,
            });
        }
        let bytes = std::fs::read(start_script)?;
        Ok(NodeIdentity {
            drv: None,
            start_script: Some(start_script.display().to_string()),
            start_script_sha256: Some(sha256_hex(&bytes)),
        })
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (&self.drv, &self.start_script, &self.start_script_sha256) {
            (Some(drv), _, _) => f.write_str(drv),
            (None, Some(script), Some(sha)) => {
                write!(f, "{script} (sha256 {})", &sha[..sha.len().min(16)])
            }
            (None, Some(script), None) => f.write_str(script),
            (None, None, _) => f.write_str("unknown"),
        }
    }
}

/// The tag file beside a kept state dir (not inside it: QEMU owns the dir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub format: String,
    pub test: String,
    pub node: String,
    #[serde(flatten)]
    pub identity: NodeIdentity,
}

/// What the tag file says; `Ok(None)` when there is none, `Err` with a reason when it cannot be used.
pub fn read_tag(path: &Path) -> Result<Option<Tag>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let tag: Tag = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a valid tag: {e}", path.display()))?;
    if tag.format != TAG_FORMAT {
        return Err(format!(
            "{} has format {:?}, expected {TAG_FORMAT:?}",
            path.display(),
            tag.format
        ));
    }
    Ok(Some(tag))
}

/// Writes the tag atomically (a temporary file renamed over the old one).
pub fn write_tag(path: &Path, tag: &Tag) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    let mut json = serde_json::to_vec_pretty(tag).map_err(std::io::Error::other)?;
    json.push(b'\n');
    file.write_all(&json)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

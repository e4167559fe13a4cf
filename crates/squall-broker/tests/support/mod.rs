//! Shared by the broker's test binaries: waiting for a delivery, finding a stream's segments.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::Duration;

use squall_core::{Consumer, Delivery};

/// The next delivery, within 60 s.
pub async fn next(c: &mut Box<dyn Consumer>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(60), c.next())
        .await
        .expect("a delivery within 60 s")
        .expect("consumer open")
        .expect("no error")
}

/// The segment files of stream `stream` in the log storage at `dir`, oldest first.
pub fn segment_files(dir: &Path, stream: &str) -> Vec<PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("streams").join(stream))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

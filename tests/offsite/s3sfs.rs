//! An S3 server that checks signatures: `s3s-fs` on 127.0.0.1 (`cargo install s3s-fs
//! --version 0.14.1 --features binary`; `.ci/run` does), started with the access and secret
//! key of [`KEYS`], storing into a directory of the test: a bucket is a directory, an object
//! a file (`ROOT/BUCKET/KEY`), the parts of an unfinished multipart upload
//! `ROOT/.upload_id-UUID.part-N`. What it stored survives a restart.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::fixture::{free_port, BUCKET, KEYS};
use crate::util::KillOnDrop;

pub struct S3sFs {
    pub port: u16,
    pub root: PathBuf,
    child: Option<KillOnDrop>,
}

impl S3sFs {
    /// Start on a free port, storing into `root` (created, with the bucket).
    pub fn start(root: &Path) -> S3sFs {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let mut s = S3sFs {
            port: free_port(),
            root: root.to_path_buf(),
            child: None,
        };
        s.restart();
        s
    }

    /// (Re)start on the same port and directory.
    pub fn restart(&mut self) {
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEYS[0].1, "--secret-key", KEYS[1].1])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs must be installed (cargo install s3s-fs --version 0.14.1 --features binary; .ci/run does)");
        self.child = Some(KillOnDrop(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {} in 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, reaped.
    pub fn kill(&mut self) {
        self.child.take();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the object `key` of the bucket is stored.
    pub fn object(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// The part files of unfinished multipart uploads.
    pub fn parts(&self) -> Vec<String> {
        crate::util::names(&self.root)
            .into_iter()
            .filter(|n| n.starts_with(".upload_id-") && n.contains(".part-"))
            .collect()
    }
}

//! What the off-site tests share: a moto S3 server on 127.0.0.1 (killed on drop), an age
//! key pair made with the `age-keygen` CLI, a database with rows and a configuration with a
//! remote, and a decryption of a stored copy with the standard `age` and `zstd` CLIs.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::KillOnDrop;
use crate::util::{both, TestEnv};

pub const BUCKET: &str = "lk-offsite";

/// A moto S3 server on 127.0.0.1.
pub struct Moto {
    pub port: u16,
    _child: KillOnDrop,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    /// Start moto on `port` (CI installs it: `.ci/run`; a missing one fails the test).
    pub fn start_on(port: u16) -> Moto {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (pip install 'moto[server]'; .ci/run does)");
        let m = Moto {
            port,
            _child: KillOnDrop(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port} in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    pub fn start() -> Moto {
        Moto::start_on(free_port())
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (moto accepts unsigned requests).
    pub fn bucket(&self, name: &str) {
        ureq::put(&format!("{}/{name}", self.endpoint()))
            .call()
            .expect("create bucket");
    }

    /// A signed client of the bucket (moto refuses anonymous reads of objects).
    pub fn client(&self) -> (tokio::runtime::Runtime, object_store::aws::AmazonS3) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(KEYS[0].1)
            .with_secret_access_key(KEYS[1].1)
            .build()
            .unwrap();
        (rt, s3)
    }

    /// An object's bytes, `None` when it does not exist.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStore;
        let (rt, s3) = self.client();
        rt.block_on(async {
            match s3.get(&key.into()).await {
                Ok(g) => Some(g.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {key}: {e}"),
            }
        })
    }
}

impl Moto {
    pub fn put(&self, key: &str, bytes: &[u8]) {
        use object_store::ObjectStore;
        let (rt, s3) = self.client();
        rt.block_on(s3.put(&key.into(), bytes.to_vec().into()))
            .unwrap();
    }

    pub fn delete(&self, key: &str) {
        use object_store::ObjectStore;
        let (rt, s3) = self.client();
        rt.block_on(s3.delete(&key.into())).unwrap();
    }
}

/// A new age identity file in the temp dir; its public key.
pub fn keygen(env: &TestEnv) -> (PathBuf, String) {
    let key = env.path("identity.txt");
    let o = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen must be installed (apt-get install age; .ci/run does)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&key).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    (key, public)
}

/// A database `chat.db` with 500 rows.
pub fn chat_db(env: &TestEnv) -> PathBuf {
    env.sqlite(
        "chat.db",
        "CREATE TABLE IF NOT EXISTS m(id INTEGER PRIMARY KEY, body TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 500)
         INSERT INTO m(body) SELECT 'message ' || i FROM n;",
    )
}

/// A configuration: `chat` backed up into `backups/` and copied to `remote` (a `[[remote]]`
/// body without its name), with `backup_extra` lines in `[database.backup]`.
pub fn config(env: &TestEnv, db: &Path, remote: &str, backup_extra: &str) {
    let text = format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\n[database.backup]\ndir = \"{}\"\nremotes = [\"offsite\"]\n{backup_extra}\n\n[[remote]]\nname = \"offsite\"\n{remote}\n",
        env.daemon_section(""),
        db.display(),
        env.path("backups").display()
    );
    env.write_config(&text);
}

/// An S3 remote body for `endpoint` with recipient `public`.
pub fn s3_remote(endpoint: &str, public: &str) -> String {
    format!(
        "url = \"s3://{BUCKET}/lk\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\ntimeout = \"5s\"\nencrypt_to = [\"{public}\"]\n"
    )
}

/// Credentials for moto (which accepts any).
pub const KEYS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIALITEKEEPERTEST"),
    ("AWS_SECRET_ACCESS_KEY", "lk-test-secret-never-printed"),
];

/// `litekeeper ARGS` with the moto credentials.
pub fn run(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let mut c = env.cmd();
    c.args(args);
    for (k, v) in KEYS {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `age -d -i KEY | zstd -d` of `stored`: the plaintext bytes.
pub fn decrypt_with_clis(env: &TestEnv, identity: &Path, stored: &[u8]) -> Vec<u8> {
    let enc = env.path("copy.age");
    std::fs::write(&enc, stored).unwrap();
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i '{}' '{}' | zstd -d -c",
            identity.display(),
            enc.display()
        ))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "age | zstd: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Pending copies in the state DB: (remote, file).
pub fn pending(env: &TestEnv) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open(env.path("state/state.db")).unwrap();
    let mut st = c
        .prepare("SELECT remote, file FROM remote_pending ORDER BY since, file")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The local backup files of `chat` (no manifest, no lock).
pub fn local_backups(env: &TestEnv) -> Vec<String> {
    crate::util::names(&env.path("backups"))
        .into_iter()
        .filter(|n| n.starts_with("chat-"))
        .collect()
}

/// After a failed run: the local backup is there, listed, and its copy pending.
pub fn kept_and_pending(env: &TestEnv) -> String {
    let local = local_backups(env);
    assert_eq!(local.len(), 1, "the local backup is kept: {local:?}");
    let o = env.run_ok(&["backups", "list", "chat", "--json"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&local[0]),
        "listed: {}",
        both(&o)
    );
    assert_eq!(
        pending(env),
        vec![("offsite".to_string(), local[0].clone())]
    );
    local[0].clone()
}

/// The local files of the full backups a remote manifest (parsed) lists, in its order.
pub fn listed_fulls(m: &serde_json::Value) -> Vec<String> {
    m["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["local_file"].as_str().unwrap().to_string())
        .collect()
}

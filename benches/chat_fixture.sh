# benches/chat_fixture.sh: sourced by the benchmarks (run.sh, verify.sh). Defines
# `chat_fixture MB FILE`: builds the chat-shaped WAL database of about MB MiB at FILE unless it
# exists (see `benches/run.sh --help`, "fixture"); progress on stdout, an error exits 1.
# The file name carries a version (chat-<MB>MiB-v1.db): bump it when the SQL below changes.

chat_fixture_die() { echo "chat_fixture: $*" >&2; exit 1; }

# The body is not indented: it holds a heredoc and a Python program.
chat_fixture() {
  local mb=$1 fixture=$2
  local messages convs t_end span t0 b0 lorem
# created_at: one message every >= 10 s over (at least) a year ending 2026-01-01, so the older
# half ends between two messages far enough apart for litekeeper's "older_than" to hit the same
# cutoff as the SQL below. ~580 bytes per message with its index entries.
messages=$(( mb * 1780 ))
convs=$(( messages / 46 ))
[ "$convs" -ge 1 ] || convs=1
t_end=1767225600
span=$(( messages * 10 > 365 * 86400 ? messages * 10 : 365 * 86400 ))
t0=$(( t_end - span ))
if [ ! -f "$fixture" ]; then
  echo "building the fixture: $messages messages in $convs conversations (BENCH_MB=$mb) into $fixture..."
  b0=$(date +%s.%N)
  rm -f "$fixture.building"
  lorem=$(python3 -c '
import random
r = random.Random(16)
w = ("the a an and of to in is it you that was for on are with as I his they be at one have this from "
     "or had by hot word but what some we can out other were all there when up use your how said each "
     "she which do their time if will way about many then them write would like so these her long make "
     "thing see him two has look more day could go come did number sound no most people my over know "
     "water than call first who may down side been now find backup message chat model answer question").split()
print(" ".join(r.choice(w) for _ in range(600)))')
  sqlite3 -bail "$fixture.building" >/dev/null <<SQL || chat_fixture_die "building the fixture failed (see the sqlite3 error above)"
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
PRAGMA cache_size = -262144;
CREATE TABLE conversations(
  id INTEGER PRIMARY KEY,
  title TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL);
CREATE TABLE messages(
  id INTEGER PRIMARY KEY,
  conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  role TEXT NOT NULL,
  content TEXT NOT NULL,
  created_at INTEGER NOT NULL);
CREATE TEMP TABLE lorem(t TEXT);
INSERT INTO lorem VALUES ('$lorem');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $convs)
INSERT INTO conversations(id, title, created_at, updated_at)
  SELECT i, 'conversation ' || i || ' ' || lower(hex(randomblob(6))),
         $t0 + ((i - 1) * $span) / $convs, $t0 + ((i - 1) * $span) / $convs FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $messages)
INSERT INTO messages(conversation_id, role, content, created_at)
  SELECT max(1, 1 + ((i - 1) * $convs) / $messages - abs(random()) % 20),
         CASE i % 2 WHEN 0 THEN 'user' ELSE 'assistant' END,
         substr((SELECT t FROM lorem), 1 + abs(random()) % 2000, 40 + abs(random()) % 560)
           || ' ' || lower(hex(randomblob(abs(random()) % 200))),
         $t0 + ((i - 1) * $span) / $messages FROM n;
CREATE INDEX messages_created_at ON messages(created_at);
CREATE INDEX messages_conversation_id ON messages(conversation_id);
UPDATE conversations SET updated_at = m.last
  FROM (SELECT conversation_id AS cid, max(created_at) AS last FROM messages GROUP BY conversation_id) AS m
  WHERE m.cid = conversations.id;
CREATE INDEX conversations_updated_at ON conversations(updated_at);
DROP TABLE lorem;
PRAGMA journal_mode = WAL;
SQL
  sqlite3 -bail "$fixture.building" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null \
    || chat_fixture_die "checkpointing the fixture failed"
  sync "$fixture.building"
  mv "$fixture.building" "$fixture"
  echo "built in $(python3 -c "import time; print(f'{time.time() - $b0:.0f}')") s"
fi
}

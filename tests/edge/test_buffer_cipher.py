"""Buffer encryption at rest (edge/buffer_cipher.py): payloads sealed with AES-GCM on disk,
read back as written; a wrong or missing key is a clear error naming the file; a row
changed on disk is quarantined with a reason, counted, and never stops the buffer."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from nats.js.client import JetStreamContext

from app.cli import main
from edge import accounting
from edge.agent import Agent
from edge.buffer import DeadLetter, PendingBatch, SourceCounts, SqliteBuffer
from edge.buffer_cipher import create_key_file
from edge.errors import BufferKeyError
from gateway import config
from gateway.config import AgentConfig
from gateway.errors import ConfigError
from gateway.servers import NatsServer
from tests.edge.test_agent_integration import _seqs_in_stream, running
from tests.edge.test_mqtt_source import make_config
from tests.helpers import eventually, json_payloads, publish_qos1

SECRET = b'{"device":"phone","lat":59.4313733,"lon":18.3259013}' * 20


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "buffer.key"
    create_key_file(path)
    return path


def opened(path: Path, key: Path | None) -> SqliteBuffer:
    buf = SqliteBuffer(path, max_bytes=1 << 20, key_file=key)
    buf.open()
    return buf


def add(buf: SqliteBuffer, payload: bytes, readings: int = 5, letter: bytes = b"") -> None:
    letters = [DeadLetter("mqtt0", "invalid_json", "d1: bad", letter)] if letter else []
    counts = SourceCounts(Counter({"mqtt0": readings}))
    buf.commit(PendingBatch("ct", readings, payload), buf.next_batch_id("a"), letters, None, counts)


def on_disk(path: Path, needle: bytes) -> bool:
    """`needle` in the buffer's files (the database, its WAL if any), bytes as stored."""
    return any(needle in f.read_bytes() for f in path.parent.glob(path.name + "*"))


def raw(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_payloads_are_sealed_on_disk_and_read_back_as_written(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "data" / "buffer.sqlite3"
    buf = opened(path, key)
    add(buf, SECRET, letter=b'{"lat":59.4313733')
    buf.close()
    for (blob,) in raw(
        path, "SELECT payload FROM batches UNION ALL SELECT payload FROM dead_letters"
    ):
        assert isinstance(blob, bytes) and b"59.43" not in blob
    assert raw(path, "SELECT compressed FROM batches") == [(3,)]  # LZ4, then sealed
    assert raw(path, "SELECT encrypted FROM dead_letters") == [(1,)]
    assert not on_disk(path, b"59.4313733")
    again = opened(path, key)
    [batch] = again.oldest_batches(10)
    [letter] = again.oldest_dead_letters(10)
    assert batch.payload == SECRET and letter.letter.payload == b'{"lat":59.4313733'


def test_a_wrong_key_is_refused_at_open_naming_the_file(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    opened(path, key).close()
    other = tmp_path / "other.key"
    create_key_file(other)
    with pytest.raises(
        BufferKeyError, match=rf"'{other}': not the key the buffer .* was encrypted"
    ):
        opened(path, other)


def test_an_encrypted_buffer_needs_its_key_until_it_is_drained(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    buf = opened(path, key)
    add(buf, SECRET)
    buf.close()
    with pytest.raises(
        BufferKeyError, match=r"holds 1 encrypted rows and no buffer\.encryption_key"
    ):
        opened(path, None)
    buf = opened(path, key)
    buf.delete_batches(buf.oldest_batches(10))
    buf.close()
    opened(path, None).close()  # nothing sealed is left: encryption may be turned off


def test_missing_open_or_malformed_key_files_are_named(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    missing = tmp_path / "nope.key"
    with pytest.raises(BufferKeyError, match=rf"'{missing}': cannot read: No such file"):
        opened(path, missing)
    key.chmod(0o644)
    with pytest.raises(BufferKeyError, match=r"readable by others \(mode 644\); chmod 600"):
        opened(path, key)
    key.write_text("c2hvcnQ=\n")
    key.chmod(0o600)
    with pytest.raises(BufferKeyError, match="not a 32-byte key in base64"):
        opened(path, key)


def test_a_tampered_batch_is_quarantined_and_counted_not_fatal(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    buf = opened(path, key)
    for n in (5, 7, 9):
        add(buf, random.randbytes(500), n)
    first, second, third = buf.oldest_batches(10)
    db = buf.connection
    stored = bytearray(
        db.execute("SELECT payload FROM batches WHERE id = ?", (first.row,)).fetchone()[0]
    )
    stored[-1] ^= 1
    db.execute("UPDATE batches SET payload = ? WHERE id = ?", (bytes(stored), first.row))
    # A sealed payload moved to another row does not authenticate there either.
    db.execute(
        "UPDATE batches SET payload = (SELECT payload FROM batches WHERE id = ?) WHERE id = ?",
        (third.row, second.row),
    )
    assert [b.row for b in buf.oldest_batches(10)] == [third.row]
    accts = accounting.accounts(buf.connection)
    assert accts["mqtt0"].dropped == {"tampered": 12} and accts["mqtt0"].buffered == 9
    assert accts["mqtt0"].balance == 0
    assert buf.stats().bytes == buf._bytes


def test_a_tampered_dead_letter_goes_out_without_its_payload(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    buf = opened(path, key)
    add(buf, SECRET, letter=b"{bad json")
    buf.connection.execute("UPDATE dead_letters SET detail = 'forged'")  # bound to the seal
    [stored] = buf.oldest_dead_letters(10)
    assert stored.letter.payload == b"" and "tampered" in stored.letter.detail
    assert [b.payload for b in buf.oldest_batches(10)] == [SECRET]


def test_plain_buffers_are_unchanged_and_readable_after_turning_encryption_on(
    tmp_path: Path, key: Path
) -> None:
    path = tmp_path / "buffer.sqlite3"
    buf = opened(path, None)
    add(buf, b"plain" * 50, letter=b"{x")
    add(buf, SECRET)
    buf.close()
    assert raw(path, "SELECT compressed FROM batches") == [(1,), (1,)]
    assert on_disk(path, b"59.4313733")  # what the sealed test proves absent
    buf = opened(path, None)
    buf.delete_batches(buf.oldest_batches(10)[1:])
    buf.close()
    buf = opened(path, key)
    add(buf, SECRET)
    assert [b.payload for b in buf.oldest_batches(10)] == [b"plain" * 50, SECRET]
    assert [d.letter.payload for d in buf.oldest_dead_letters(10)] == [b"{x"]


def test_the_key_must_live_outside_data_dir_and_cannot_be_pushed(tmp_path: Path) -> None:
    raw_cfg = {
        "site": "s",
        "agent": "a",
        "data_dir": str(tmp_path / "data"),
        "buffer": {"encryption_key_file": str(tmp_path / "data" / "k.key")},
    }
    with pytest.raises(ConfigError, match=r"encryption_key_file .* is inside data_dir"):
        config.parse(AgentConfig, raw_cfg)
    with pytest.raises(ConfigError, match=r"buffer\.encryption_key_file: takes effect only at"):
        config.parse_overlay('[buffer]\nencryption_key_file = "/etc/k"\n')


def test_buffer_key_command_writes_0600_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "etc" / "buffer.key"
    assert main(["edge", "buffer-key", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    assert main(["edge", "buffer-key", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err and path.read_bytes() == before
    opened(tmp_path / "buffer.sqlite3", path).close()  # a usable key


async def test_an_agent_with_an_encrypted_buffer_streams_its_readings(
    tmp_path: Path,
    key: Path,
    cloud_server: NatsServer,
    edge_broker: NatsServer,
    js: JetStreamContext,
) -> None:
    cfg = make_config(
        tmp_path, cloud_server, edge_broker.mqtt_port, buffer={"encryption_key_file": str(key)}
    )
    async with running(Agent(cfg)) as agent:
        payloads = json_payloads("d1", range(1, 201))
        await asyncio.to_thread(publish_qos1, edge_broker.mqtt_port, "sensors/s1/d1", payloads)
        seqs = await eventually(lambda: _seqs_in_stream(js), lambda s: len(s) >= 200)
        sealed = agent.buffer.connection.execute(
            "SELECT COUNT(*) FROM meta WHERE key = 'cipher_check'"
        ).fetchone()
    assert seqs == list(range(1, 201)) and sealed == (1,)

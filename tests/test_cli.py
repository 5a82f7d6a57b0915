"""The command-line tools as an operator runs them: real subprocesses.

``stocksync-agent record/import/status/run`` and ``stocksync-hub
serve/stock`` on real SQLite files: what they record, what they print, and
that every bad input ends with a clear message on stderr, a non-zero exit, no
Python traceback and the store exactly as it was (DESIGN §4, §9, §11.7).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENT, HUB, HubProcess, read_only, run_cli

from stocksync.agent.store import AgentStore
from stocksync.events import Kind, NewEvent

State = tuple[str, list[tuple[Any, ...]], list[tuple[Any, ...]]] | None


# -- helpers ---------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any STOCKSYNC_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    env.update(extra)
    return env


def agent(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", clean_env())
    return run_cli(AGENT, *args, **kw)


def hub_cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", clean_env())
    return run_cli(HUB, *args, **kw)


def record(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return agent("record", *args, "--db", str(db))


def state(db: Path) -> State:
    """Everything a command could change in a store (None: no store at all)."""
    if not db.exists():
        return None
    with contextlib.closing(read_only(db)) as conn:
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        events = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
        stock = conn.execute("SELECT * FROM stock ORDER BY sku").fetchall()
    return str(epoch), events, stock


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A non-zero exit with a message naming ``fragments`` and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip(), "no message on stderr"
    for fragment in fragments:
        assert fragment.lower() in result.stderr.lower(), (fragment, result.stderr)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store holding two events: receive 10 SKU-1, ship 3 SKU-1."""
    path = tmp_path / "agent.db"
    with AgentStore(path) as store:
        store.record_many([NewEvent("SKU-1", Kind.RECEIVE, 10), NewEvent("SKU-1", Kind.SHIP, 3)])
    return path


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(f"{row}\n" for row in rows))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- record -------------------------------------------------------------------------


def test_record_every_kind(tmp_path: Path) -> None:
    db = tmp_path / "lax.db"
    out = record(db, "receive", "SKU-1", "10")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "recorded seq 1: receive 10 SKU-1 (on_hand 10)"

    assert record(db, "ship", "SKU-1", "3", "--reservation", "R-1001").returncode == 0
    out = record(db, "adjust", "SKU-1", "-5", "--reason", "damage")
    assert out.returncode == 0, out.stderr
    assert "on_hand 2" in out.stdout
    assert record(db, "adjust", "SKU-1", "4", "--reason", "found").returncode == 0
    # A count without --as-of-seq is a count taken now.
    out = record(db, "count", "SKU-1", "40", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"seq": 5, "sku": "SKU-1", "kind": "COUNT", "on_hand": 40}

    # A count as of a past seq is rebased: the ship recorded after it survives.
    assert record(db, "receive", "SKU-2", "20").returncode == 0
    assert record(db, "ship", "SKU-2", "5").returncode == 0
    out = record(db, "count", "SKU-2", "18", "--as-of-seq", "6", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"seq": 8, "sku": "SKU-2", "kind": "COUNT", "on_hand": 13}

    out = record(db, "receive", "SKU-3", "1", "--json")
    assert json.loads(out.stdout) == {"seq": 9, "sku": "SKU-3", "kind": "RECEIVE", "on_hand": 1}

    with contextlib.closing(read_only(db)) as conn:
        rows = conn.execute(
            "SELECT seq, sku, kind, quantity, delta, reason, reservation_id, as_of_seq "
            "FROM events ORDER BY seq"
        ).fetchall()
        stock = dict(conn.execute("SELECT sku, on_hand FROM stock").fetchall())
    assert rows == [
        (1, "SKU-1", 1, 10, 10, "", "", 0),
        (2, "SKU-1", 2, 3, -3, "", "R-1001", 0),
        (3, "SKU-1", 3, -5, -5, "damage", "", 0),
        (4, "SKU-1", 3, 4, 4, "found", "", 0),
        (5, "SKU-1", 4, 40, 34, "", "", 4),
        (6, "SKU-2", 1, 20, 20, "", "", 0),
        (7, "SKU-2", 2, 5, -5, "", "", 0),
        (8, "SKU-2", 4, 18, -2, "", "", 6),
        (9, "SKU-3", 1, 1, 1, "", "", 0),
    ]
    assert stock == {"SKU-1": 40, "SKU-2": 13, "SKU-3": 1}


BAD_RECORDS: dict[str, tuple[list[str], list[str]]] = {
    "negative-receive": (["receive", "SKU-1", "-5"], ["greater than 0"]),
    "zero-ship": (["ship", "SKU-1", "0"], ["greater than 0"]),
    "zero-adjust": (["adjust", "SKU-1", "0"], ["adjust", "not be 0"]),
    "negative-count": (["count", "SKU-1", "-1"], ["count"]),
    "empty-sku": (["receive", "", "5"], ["sku", "empty"]),
    "long-sku": (["receive", "S" * 65, "5"], ["65", "64"]),
    "sku-with-space": (["receive", "SKU 1", "5"], ["sku", "may only contain"]),
    "unknown-kind": (["frobnicate", "SKU-1", "5"], ["frobnicate"]),
    "non-integer-qty": (["receive", "SKU-1", "ten"], ["ten"]),
    "fractional-qty": (["ship", "SKU-1", "1.5"], ["1.5"]),
    "huge-qty": (["receive", "SKU-1", "2000000000"], ["out of range"]),
    "missing-qty": (["receive", "SKU-1"], ["QTY"]),
    "as-of-past-high-seq": (["count", "SKU-1", "5", "--as-of-seq", "99"], ["99", "past"]),
    "negative-as-of": (["count", "SKU-1", "5", "--as-of-seq", "-1"], ["as-of-seq"]),
    "long-reason": (["adjust", "SKU-1", "-1", "--reason", "r" * 201], ["reason"]),
    "long-reservation": (["ship", "SKU-1", "1", "--reservation", "R" * 129], ["reservation"]),
    "unknown-option": (["receive", "SKU-1", "5", "--bogus"], ["--bogus"]),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_is_refused_and_changes_nothing(case: str, db: Path) -> None:
    args, fragments = BAD_RECORDS[case]
    before = state(db)
    assert_clean_error(record(db, *args), *fragments)
    assert state(db) == before


@pytest.mark.parametrize(
    "args",
    [["frobnicate", "SKU-1", "5"], ["receive", "SKU-1", "ten"], ["count", "SKU-1", "5", "-x"]],
    ids=["unknown-kind", "non-integer-qty", "unknown-option"],
)
def test_usage_error_creates_no_store(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "absent.db"
    assert_clean_error(record(db, *args))
    assert not db.exists()


def test_refused_record_or_import_creates_no_store(tmp_path: Path) -> None:
    bad_csv = write_csv(tmp_path / "bad.csv", ["SKU-1,receive,-3"])
    commands = [
        ["record", "receive", "SKU-1", "-5"],
        ["record", "adjust", "SKU-1", "0"],
        ["record", "receive", "SKU 1", "5"],
        ["record", "count", "SKU-1", "5", "--as-of-seq", "3"],
        ["import", str(bad_csv)],
    ]
    for i, args in enumerate(commands):
        db = tmp_path / f"absent-{i}.db"
        assert_clean_error(agent(*args, "--db", str(db)))
        assert not db.exists(), f"{args} created {db.name}"
        assert not Path(f"{db}-wal").exists()


# -- import ------------------------------------------------------------------------


def test_import_with_and_without_header(tmp_path: Path) -> None:
    rows = ["SKU-1,receive,10", "SKU-1,ship,4", "SKU-2,adjust,-2,damage", "SKU-1,count,5"]
    for header in (True, False):
        db = tmp_path / f"header-{header}.db"
        path = write_csv(tmp_path / f"in-{header}.csv", (["sku,kind,qty,reason"] * header) + rows)
        out = agent("import", str(path), "--db", str(db))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "recorded 4 events, seq 1..4"
        with AgentStore(db) as store:
            assert store.on_hand() == {"SKU-1": 5, "SKU-2": -2}
            assert [row[6] for row in store.events(1, 4)] == ["", "", "damage", ""]


def test_import_is_all_or_nothing(tmp_path: Path, db: Path) -> None:
    rows = [f"SKU-{i % 7},receive,{i + 1}" for i in range(100)]
    rows[50] = "SKU-50,receive,-3"
    path = write_csv(tmp_path / "in.csv", ["sku,kind,qty", *rows])
    before = state(db)
    # The header is line 1, so row 51 of the data is line 52 of the file.
    assert_clean_error(agent("import", str(path), "--db", str(db)), "line 52", "nothing")
    assert state(db) == before


def test_import_twelve_thousand_rows(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    rows = [
        f"SKU-{i % 500:03d},{('receive', 'ship', 'adjust')[i % 3]},{i % 9 + 1}"
        for i in range(12_000)
    ]
    path = write_csv(tmp_path / "big.csv", rows)
    out = agent("import", str(path), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "recorded 12000 events, seq 1..12000"
    assert "importing" in out.stderr  # the progress bar, on stderr
    with contextlib.closing(read_only(db)) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    assert seqs == list(range(1, 12_001))


BAD_CSVS: dict[str, tuple[list[str], list[str]]] = {
    "too-many-columns": (["SKU-1,receive,1", "SKU-2,receive,1,why,extra"], ["line 2", "columns"]),
    "too-few-columns": (["SKU-1,receive,1", "SKU-1,receive,1", "SKU-2,receive"], ["line 3"]),
    "bad-kind": (["SKU-1,receive,1", "SKU-2,frobnicate,1"], ["line 2", "frobnicate"]),
    "bad-qty": (["sku,kind,qty", "SKU-1,receive,1", "SKU-2,receive,lots"], ["line 3", "lots"]),
    "zero-ship": (["SKU-1,ship,0"], ["line 1", "greater than 0"]),
    "bad-sku": (["SKU-1,receive,1", "SKU 2,receive,1"], ["line 2", "sku"]),
    "long-sku": (["SKU-1,receive,1", f"{'S' * 65},receive,1"], ["line 2", "65"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_malformed_csv_names_the_line(case: str, tmp_path: Path, db: Path) -> None:
    rows, fragments = BAD_CSVS[case]
    path = write_csv(tmp_path / "in.csv", rows)
    before = state(db)
    assert_clean_error(agent("import", str(path), "--db", str(db)), *fragments)
    assert state(db) == before


def test_non_utf8_csv_is_refused(tmp_path: Path, db: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("SKU-1,receive,1\nSKU-2,adjust,-1,d\xe9g\xe2t\n".encode("latin-1"))
    before = state(db)
    assert_clean_error(agent("import", str(path), "--db", str(db)), "UTF-8")
    assert state(db) == before


def test_oversized_csv_field_is_refused_cleanly(tmp_path: Path, db: Path) -> None:
    path = write_csv(tmp_path / "huge.csv", ["SKU-1,receive,1", f"SKU-2,adjust,-1,{'r' * 140_000}"])
    before = state(db)
    assert_clean_error(agent("import", str(path), "--db", str(db)), "line 2")
    assert state(db) == before


def test_import_missing_file(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    assert_clean_error(agent("import", str(tmp_path / "nope.csv"), "--db", str(db)), "nope.csv")
    assert not db.exists()


# -- status, run, serve, queries ----------------------------------------------------


def test_status_of_a_fresh_store(db: Path) -> None:
    out = agent("status", "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["connected"] is False
    assert info["high_seq"] == 2
    assert info["pending"] == 2
    assert info["hub_watermark"] == 0
    assert info["oldest_pending_age_s"] is not None
    with AgentStore(db) as store:
        assert info["epoch"] == store.epoch
    text = agent("status", "--db", str(db))
    assert text.returncode == 0
    assert "pending events" in text.stdout


def test_status_on_a_missing_store(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    assert_clean_error(agent("status", "--db", str(db), "--json"), "missing.db")
    assert not db.exists()


def test_commands_on_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database\n" * 100)
    before = junk.read_bytes()
    assert_clean_error(agent("status", "--db", str(junk)), "junk.db")
    assert_clean_error(record(junk, "receive", "SKU-1", "1"), "junk.db")
    assert junk.read_bytes() == before


def test_run_on_another_warehouses_store(tmp_path: Path, db: Path) -> None:
    with AgentStore(db) as store:
        store.claim("WH-LAX")
    before = state(db)
    out = agent(
        "run",
        "--warehouse",
        "WH-FRA",
        "--db",
        str(db),
        "--hub",
        f"127.0.0.1:{closed_port()}",
        "--insecure",
    )
    assert_clean_error(out, "WH-LAX")
    assert state(db) == before


def test_stock_with_no_hub_answering() -> None:
    target = f"127.0.0.1:{closed_port()}"
    out = hub_cli("stock", "SKU-1", "--hub", target, "--insecure")
    assert_clean_error(out, "no hub answering", target)
    out = hub_cli("warehouses", "--hub", target, "--insecure", "--json")
    assert_clean_error(out, "no hub answering")


def test_stock_refused_by_the_hub(hub: HubProcess) -> None:
    out = hub_cli("stock", "SKU-1", "bad sku", "--hub", hub.target, "--insecure")
    assert_clean_error(out, "INVALID_ARGUMENT", "bad sku")
    out = hub_cli("warehouses", "--hub", hub.target, "--insecure", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    out = hub_cli("stock", "SKU-1", "--hub", hub.target, "--insecure", "--json")
    assert out.returncode == 0, out.stderr
    item = json.loads(out.stdout)
    assert (item["sku"], item["sellable"], item["on_hand"], item["warehouses"]) == (
        "SKU-1",
        0,
        0,
        {},
    )


def test_stock_without_transport_choice() -> None:
    out = hub_cli("stock", "SKU-1", "--hub", f"127.0.0.1:{closed_port()}")
    assert_clean_error(out, "--insecure")


def test_stock_needs_a_sku() -> None:
    assert_clean_error(hub_cli("stock", "--insecure"), "SKU")


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--db",
        str(tmp_path / "agent.db"),
        "--hub",
        f"127.0.0.1:{closed_port()}",
        *extra,
    ]


def test_run_without_warehouse(tmp_path: Path) -> None:
    out = agent(*run_args(tmp_path, "--insecure"), cwd=tmp_path)
    assert_clean_error(out, "warehouse")
    assert out.returncode == 2  # a usage error
    assert not (tmp_path / "agent.db").exists()


def test_run_with_bad_warehouse_id(tmp_path: Path) -> None:
    out = agent(*run_args(tmp_path, "--insecure", "--warehouse", "WH LAX"), cwd=tmp_path)
    assert_clean_error(out, "warehouse")


def test_run_with_max_batch_events_zero_in_env(tmp_path: Path) -> None:
    out = agent(
        *run_args(tmp_path, "--insecure", "--warehouse", "WH-LAX"),
        cwd=tmp_path,
        env=clean_env(STOCKSYNC_AGENT_MAX_BATCH_EVENTS="0"),
    )
    assert_clean_error(out, "max_batch_events")
    assert not (tmp_path / "agent.db").exists()


def test_run_with_non_numeric_env(tmp_path: Path) -> None:
    out = agent(
        *run_args(tmp_path, "--insecure", "--warehouse", "WH-LAX"),
        cwd=tmp_path,
        env=clean_env(STOCKSYNC_AGENT_WINDOW_EVENTS="lots"),
    )
    assert_clean_error(out, "window_events", "STOCKSYNC_AGENT_WINDOW_EVENTS")


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('warehouse = "WH-LAX"\ninsecure = true\nbatch_max_evnets = 10\n', "batch_max_evnets"),
        ('warehouse = "WH-LAX"\ninsecure = true\nmax_batch_events = "ten"\n', "max_batch_events"),
        ('warehouse = "WH-LAX"\ninsecure = true\nwindow_events = 10\n', "window_events"),
        ('warehouse = "WH-LAX\ninsecure = true\n', "TOML"),
    ],
    ids=["unknown-key", "wrong-type", "window-below-batch", "not-toml"],
)
def test_run_with_bad_config_file(tmp_path: Path, toml: str, fragment: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(toml)
    out = agent(*run_args(tmp_path, "--config", str(config)), cwd=tmp_path)
    assert_clean_error(out, fragment)
    assert not (tmp_path / "agent.db").exists()


def test_run_with_missing_config_file(tmp_path: Path) -> None:
    out = agent(*run_args(tmp_path, "--config", str(tmp_path / "nope.toml")), cwd=tmp_path)
    assert_clean_error(out, "nope.toml")


def test_run_without_insecure_or_tls(tmp_path: Path) -> None:
    out = agent(*run_args(tmp_path, "--warehouse", "WH-LAX"), cwd=tmp_path)
    assert_clean_error(out, "insecure")
    assert not (tmp_path / "agent.db").exists()


def test_serve_without_insecure_or_tls(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    out = hub_cli("serve", "--db", str(db), "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert_clean_error(out, "insecure")
    assert not db.exists()


def test_serve_with_bad_listen_address(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    out = hub_cli("serve", "--db", str(db), "--listen", "nowhere", "--insecure", cwd=tmp_path)
    assert_clean_error(out, "listen")
    assert not db.exists()


def test_serve_on_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = hub_cli(
            "serve", "--db", str(tmp_path / "hub.db"), "--listen", f"127.0.0.1:{port}", "--insecure"
        )
    assert_clean_error(out, "address already in use", str(port))
    assert not (tmp_path / "hub.db").exists()


def test_serve_on_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database\n" * 100)
    out = hub_cli("serve", "--db", str(junk), "--listen", "127.0.0.1:0", "--insecure")
    assert_clean_error(out, "junk.db")
    assert junk.read_bytes() == b"this is not a database\n" * 100


def test_unknown_commands() -> None:
    assert_clean_error(agent("frobnicate"), "frobnicate")
    assert_clean_error(hub_cli("frobnicate"), "frobnicate")

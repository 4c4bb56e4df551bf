"""The dump command: JSON lines, --summary, --from, encryption options, exit codes."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from cdcpipe.capture import dump

KEY_HEX = "b7d96fb9b11d829179aeeb0b4e81f97a"


def run(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    dump.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = dump.run(parser.parse_args(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def schema(tmp_path: Path, cfid: str) -> Path:
    path = tmp_path / "schema.cql"
    path.write_text(f'CREATE TABLE "Keyspace1"."Standard1" (key ascii, col ascii, val blob, val0 blob, '
                    f"PRIMARY KEY (key, col)) WITH id = {cfid};\n")
    return path


def test_json_lines(testdata: Path, tmp_path: Path) -> None:
    seg = testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log"
    code, out, _ = run([str(seg), "--schema-cql", str(schema(tmp_path, "657e5210-7cbb-11ee-9858-c9aa1eb53e69"))])
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 355
    first = lines[0]
    assert first["table"] == "Keyspace1.Standard1" and first["position"].startswith("1699285478684:")
    assert len(first["partition_key"]["key"]) == 16
    row = first["rows"][0]
    assert row["clustering"] == {"col": "name0"} and row["liveness"]["timestamp"] > 0
    cell = row["cells"][0]
    assert cell["column"] == "val" and bytes.fromhex(cell["value"]) and cell["deleted"] is False
    assert cell["time"].startswith("2023-11-06T")

    start = lines[99]["position"]
    code, out2, _ = run([str(seg), "--schema-cql", str(tmp_path / "schema.cql"), "--from", start])
    assert [json.loads(x) for x in out2.splitlines()] == lines[100:]


def test_summary_encrypted_with_keystore(testdata: Path, tmp_path: Path) -> None:
    folder = testdata / "3.4-encrypted"
    cql = schema(tmp_path, "c5b59a80-b25b-11e6-b205-bb359f887ad3")
    code, out, _ = run([*map(str, sorted(folder.glob("*.log"))), "--schema-cql", str(cql), "--summary",
                        "--keystore", str(testdata / "test-conf/cassandra.keystore"),
                        "--keystore-password", "cassandra", "--key-alias", "testing:1"])
    assert code == 0
    summary = json.loads(out)
    assert summary["segments"] == 2 and summary["sections"] == 3 and summary["entries"] == 14562
    assert summary["tables"] == {"Keyspace1.Standard1": 14561,
                                 "24101c25-a2ae-3af7-87c1-b40ee1aca33f (system_schema.columns, no schema)": 1}
    assert summary["errors"] == []


def test_hex_key_and_missing_key(testdata: Path, tmp_path: Path) -> None:
    seg = str(testdata / "3.4-encrypted/CommitLog-6-1480001790339.log")
    cql = str(schema(tmp_path, "c5b59a80-b25b-11e6-b205-bb359f887ad3"))
    assert run([seg, "--schema-cql", cql, "--encryption-key", KEY_HEX])[0] == 0
    code, _, err = run([seg, "--schema-cql", cql])
    assert code == 2 and "no key" in err


def test_damage_reported(testdata: Path, tmp_path: Path) -> None:
    data = bytearray((testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log").read_bytes())
    data[2000] ^= 0xFF
    seg = tmp_path / "CommitLog-7-1699285478684.log"
    seg.write_bytes(bytes(data))
    code, out, _ = run([str(seg), "--schema-cql", str(schema(tmp_path, "657e5210-7cbb-11ee-9858-c9aa1eb53e69")),
                        "--summary"])
    summary = json.loads(out)
    assert code == 1 and len(summary["errors"]) == 1 and summary["errors"][0]["segment"] == str(seg)
    assert summary["tables"]["Keyspace1.Standard1"] == 354


def test_bad_schema_file(testdata: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cql"
    bad.write_text("CREATE TABLE ks.t (a int PRIMARY KEY);")
    code, _, err = run([str(testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log"), "--schema-cql", str(bad)])
    assert code == 2 and "no table id" in err


def test_from_argument_is_validated() -> None:
    with pytest.raises(SystemExit):
        run(["x.log", "--from", "nonsense"])

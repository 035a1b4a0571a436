"""Tests of hvae_jax.logs: JSON lines, TensorBoard scalars read back with an independent TFRecord reader, resume."""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
import pytest

from hvae_jax.logs import MetricsLog, flatten_scalars

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def _crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): slow but independent of tensorboardX."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: pathlib.Path) -> list[bytes]:
    """TFRecord payloads: [uint64 length][uint32 masked crc of length][data][uint32 masked crc of data]."""
    blob = path.read_bytes()
    records, offset = [], 0
    while offset < len(blob):
        header = blob[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", blob[offset + 8 : offset + 12])
        assert length_crc == _masked_crc(header), "corrupt length"
        data = blob[offset + 12 : offset + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[offset + 12 + length : offset + 16 + length])
        assert data_crc == _masked_crc(data), "corrupt record"
        records.append(data)
        offset += 16 + length
    return records


def read_scalars(log_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file in `log_dir`, in file order."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    for path in files:
        for record in read_records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def restart_steps(log_dir: pathlib.Path) -> list[int]:
    """Steps of the SessionLog START events: TensorBoard hides earlier events at or after such a step."""
    starts = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for record in read_records(path):
            event = event_pb2.Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                starts.append(event.step)
    return starts


ROWS = [
    {"epoch": 1, "step": 5, "loss": 3.5, "nll": 3.0, "kl": [2.0, 0.5], "beta": 0.1, "train_seconds": 1.5},
    {"epoch": 2, "step": 10, "loss": 2.5, "nll": 2.25, "kl": [1.0, 0.25], "beta": 0.2, "train_seconds": 0.5,
     "valid": {"ndcg@100": 0.3, "recall@20": 0.25, "n_users": 300}},
]


def test_flatten_names_levels_and_nested_metrics():
    flat = dict(flatten_scalars({"epoch": 3, "kl": [0.5, np.float32(0.25)], "valid": {"ndcg@100": 0.3},
                                 "note": "text", "flag": True, "loss": np.float64(1.5)}))
    assert flat == {"epoch": 3.0, "kl/level1": 0.5, "kl/level2": 0.25, "valid/ndcg@100": 0.3, "loss": 1.5}


def test_rows_become_json_lines_and_tensorboard_scalars(tmp_path):
    with MetricsLog(tmp_path) as metrics_log:
        for row in ROWS:
            metrics_log.write(row)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == ROWS

    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["loss"] == [(1, 3.5), (2, 2.5)]
    assert scalars["kl/level1"] == [(1, 2.0), (2, 1.0)]
    assert scalars["kl/level2"] == [(1, 0.5), (2, 0.25)]
    assert scalars["valid/ndcg@100"] == [(2, pytest.approx(0.3))]
    assert scalars["beta"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
    assert "epoch" not in scalars


def test_numpy_values_are_written_as_json(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as metrics_log:
        metrics_log.write({"epoch": 1, "loss": np.float32(2.5), "kl": np.array([0.5, 0.25], np.float32)})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"epoch": 1, "loss": 2.5, "kl": [0.5, 0.25]}
    assert not (tmp_path / "tensorboard").exists()


def test_fresh_log_replaces_and_resumed_log_keeps_up_to_the_checkpoint(tmp_path):
    with MetricsLog(tmp_path) as metrics_log:
        for epoch in (1, 2, 3):
            metrics_log.write({"epoch": epoch, "loss": float(10 - epoch)})
    (tmp_path / "metrics.jsonl").open("a").write('{"epoch": 4, "lo')  # cut short by an interruption

    # Resuming from a checkpoint of epoch 2: epoch 3 (logged after that checkpoint) is written again.
    with MetricsLog(tmp_path, resume_epoch=2) as metrics_log:
        metrics_log.write({"epoch": 3, "loss": 0.5})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 1, "loss": 9.0}, {"epoch": 2, "loss": 8.0}, {"epoch": 3, "loss": 0.5}]
    loss = read_scalars(tmp_path / "tensorboard")["loss"]
    assert loss == [(1, 9.0), (2, 8.0), (3, 7.0), (3, 0.5)]
    assert restart_steps(tmp_path / "tensorboard") == [3]  # so TensorBoard shows (3, 0.5), not (3, 7.0)

    with MetricsLog(tmp_path) as metrics_log:
        metrics_log.write({"epoch": 1, "loss": 1.0})
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == ['{"epoch": 1, "loss": 1.0}']
    assert read_scalars(tmp_path / "tensorboard")["loss"] == [(1, 1.0)]


def test_crc32c_matches_the_standard_check_value():
    from hvae_jax.tensorboard_events import crc32c

    # The CRC catalogue's check value of CRC-32C over the ASCII digits 1-9, and the bitwise reference above.
    assert crc32c(b"123456789") == 0xE3069283
    payload = bytes(range(256)) * 3
    assert crc32c(payload) == _crc32c(payload)


def test_a_run_with_tensorboard_imports_no_torch(tmp_path):
    # tensorboardX imports torch (seconds at every start); the library writes its event files itself.
    import subprocess
    import sys

    script = ("import sys; from hvae_jax.logs import MetricsLog\n"
              f"log = MetricsLog({str(tmp_path)!r}); log.write({{'epoch': 1, 'loss': 2.0}}); log.close()\n"
              "print(sorted(name for name in ('torch', 'tensorboardX') if name in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"
    assert read_scalars(tmp_path / "tensorboard")["loss"] == [(1, 2.0)]

from analysis.records import load_records
from lora_repro.record import write_record


def test_corrupt_and_failed_records_are_listed_not_used(tmp_path):
    good = {"status": "ok", "task": "sst2", "model": "m", "method": "lora", "seed": 1, "hparams": {"r": 8},
            "metrics": {"accuracy": 0.9}, "best_metrics": {"accuracy": 0.91, "step": 3, "epoch": 1.0},
            "params": {"adapted": 10, "trainable": 12, "total": 100}, "config": {"train": {"lr": 1e-3}}}
    write_record(tmp_path / "a", good)
    write_record(tmp_path / "b", {**good, "status": "failed", "error": "training loss is nan at step 3", "metrics": None})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "record.json").write_text('{"status": "ok", "metr')  # truncated by a crash
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "record.json").write_text("[1, 2]")
    records = load_records(tmp_path)
    assert len(records.ok) == 1
    row = records.ok.iloc[0]
    assert (row["metric.accuracy"], row["best.accuracy"], row["params.adapted"], row["hp.r"], row["train.lr"]) == (0.9, 0.91, 10, 8, 1e-3)
    assert records.failed == [(str(tmp_path / "b" / "record.json"), "training loss is nan at step 3")]
    assert [p for p, _ in records.unreadable] == [str(tmp_path / "c" / "record.json"), str(tmp_path / "d" / "record.json")]
    assert "1 ok runs, 1 failed, 2 unreadable" in records.summary()

"""metrics.jsonl at the length of a long run: a resume reads back only the records after its checkpoint."""

import json

import training.metrics_log as metrics_log
from training.metrics_log import keep_until, last_record, read_metrics

N = 20000  # logged steps (log_every 1 for 20k steps; a long run logs hundreds of thousands)


def _log(path, n=N):
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, n + 1)))


def _counting_loads(monkeypatch):
    calls = []
    real = json.loads

    def loads(text, *a, **kw):
        calls.append(1)
        return real(text, *a, **kw)

    monkeypatch.setattr(metrics_log.json, "loads", loads)
    return calls


def test_a_resume_parses_only_the_records_after_its_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    _log(path)
    with open(path, "a") as f:
        f.write('{"step": 200')  # cut by the crash
    calls = _counting_loads(monkeypatch)
    keep_until(path, N - 50)  # resumes 50 steps before the crash
    assert len(calls) <= 60, f"{len(calls)} records parsed to drop 50"
    monkeypatch.undo()
    steps = sorted(read_metrics(path))
    assert steps == list(range(1, N - 49)) and path.read_text().endswith("\n")


def test_a_resume_at_the_last_step_leaves_the_file_alone(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    _log(path)
    before = path.read_bytes()
    calls = _counting_loads(monkeypatch)
    keep_until(path, N)
    assert len(calls) <= 3 and path.read_bytes() == before


def test_the_last_record_is_read_from_the_end(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    _log(path)
    calls = _counting_loads(monkeypatch)
    assert last_record(path) == {"step": N, "loss": 1.0 / N}
    assert len(calls) <= 3


def test_a_fresh_start_empties_a_long_log_without_parsing_it(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    _log(path)
    calls = _counting_loads(monkeypatch)
    keep_until(path, 0)
    assert len(calls) <= 3 and path.read_bytes() == b""

"""A run's logs and pictures: metrics.csv, TensorBoard events, progress on a terminal and in a log file,
plots of run and compare directories, the timeline's legend and colours, a clean stderr after --engine dist."""
import csv
import fcntl
import io
import itertools
import json
import math
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest

from torchdecoupled.metrics import EpochLines, MetricsWriter, progress_bar
from torchdecoupled.plot import find_runs, load_run, panels, plot_runs, run_labels, runs_figure
from torchdecoupled.timeline import COLORS, gantt_figure

TINY = ["--dataset", "digits", "--model", "mlp", "--stages", "2", "--method", "fdg"]


def record(epoch, **extra):
    return {"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "test_loss": 0.9 / (epoch + 1),
            "test_acc": 0.5 + epoch / 10, "staleness": {"mean": [1.5, 0.0], "max": [2, 0]}, "lr": [0.1, 0.05],
            "time_s": 1.5 * (epoch + 1), **extra}


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]], rows


def test_csv_has_a_flat_column_per_stage(tmp_path):
    w = MetricsWriter(str(tmp_path), [record(0, idle_fraction=[0.25, 0.5])])
    w.epoch(record(1, idle_fraction=[0.125, 0.375]))
    header, rows, _ = read_csv(tmp_path / "metrics.csv")
    assert header[:5] == ["epoch", "train_loss", "test_loss", "test_acc", "staleness_mean_0"]
    assert {"staleness_mean_1", "staleness_max_0", "lr_0", "lr_1", "idle_fraction_0", "idle_fraction_1"} <= set(header)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["lr_1"]) == 0.05 and float(rows[1]["idle_fraction_0"]) == 0.125
    assert float(rows[0]["staleness_mean_0"]) == 1.5 and rows[0]["staleness_max_0"] == "2"


def test_csv_stays_rectangular_when_a_column_appears_later(tmp_path):
    w = MetricsWriter(str(tmp_path), [record(0)])
    w.epoch(record(1, test_f1=0.75, idle_fraction=[0.5, 0.25]))   # new columns mid-run
    w.epoch(record(2))                                              # and a record without them
    header, rows, raw = read_csv(tmp_path / "metrics.csv")
    assert header[-3:] == ["test_f1", "idle_fraction_0", "idle_fraction_1"]
    assert all(len(r) == len(header) for r in raw), raw
    assert [r["test_f1"] for r in rows] == ["", "0.75", ""]
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    # a resume starts the file afresh from the records so far: the same table
    before = (tmp_path / "metrics.csv").read_text()
    MetricsWriter(str(tmp_path), [record(0), record(1, test_f1=0.75, idle_fraction=[0.5, 0.25]), record(2)])
    assert (tmp_path / "metrics.csv").read_text() == before
    assert not (tmp_path / "metrics.csv.tmp").exists()


def test_tensorboard_events_hold_every_scalar_per_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w = MetricsWriter(str(tmp_path), [record(0, idle_fraction=[0.25, 0.5])], tensorboard=True)
    w.epoch(record(1, idle_fraction=[0.125, 0.375]))
    w.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/test", "acc/test", "lr/stage_0", "lr/stage_1", "staleness_mean/stage_0",
            "staleness_max/stage_1", "idle_fraction/stage_0", "idle_fraction/stage_1", "time_s"} <= tags, tags
    loss = events.Scalars("loss/train")
    assert [e.step for e in loss] == [1, 2] and [e.value for e in loss] == pytest.approx([1.0, 0.5])
    assert [e.value for e in events.Scalars("idle_fraction/stage_1")] == pytest.approx([0.5, 0.375])
    # a new writer starts afresh: one events file, the records again
    MetricsWriter(str(tmp_path), [record(0)], tensorboard=True).close()
    assert len(os.listdir(tmp_path / "tensorboard")) == 1


def test_tensorboard_missing_names_the_package_and_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"tensorboard package .*pip install 'torchdecoupled\[tensorboard\]'"):
        MetricsWriter(str(tmp_path), tensorboard=True)
    MetricsWriter(str(tmp_path)).epoch(record(0))  # without the flag nothing needs it


def test_progress_is_one_line_per_epoch_when_not_a_terminal():
    out = io.StringIO()
    bar = progress_bar(40, True, "fdg K=3", epochs=40, stream=out)
    assert isinstance(bar, EpochLines)
    bar.update(1)
    bar.epoch(record(1))
    bar.set_postfix(epoch=2, loss="0.333")  # the older call sites' form
    bar.close()
    first, second = out.getvalue().splitlines()
    assert first == "fdg K=3 epoch 2/40 train_loss 0.5 test_loss 0.45 test_acc 0.6 3.0 s"
    assert re.fullmatch(r"fdg K=3 epoch 3/40 loss 0\.333 \d+\.\d s", second), second
    assert progress_bar(40, False, "fdg K=3") is None


def test_progress_is_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = progress_bar(10, True, "fdg K=3", epochs=2, stream=out)
    bar.update(5)
    bar.epoch(record(0))
    bar.close()
    assert "\r" in out.getvalue() and "epoch=1/2" in out.getvalue()


def test_train_into_a_log_file_prints_plain_lines(tmp_path):
    with open(tmp_path / "err.log", "w") as err:
        subprocess.run([sys.executable, "-m", "torchdecoupled", "train", *TINY, "--epochs", "3"], stderr=err,
                       stdout=subprocess.DEVNULL, check=True, timeout=300)
    log = (tmp_path / "err.log").read_text()
    assert "\r" not in log
    lines = [line for line in log.splitlines() if " epoch " in line]
    assert [line.split(" epoch ")[1].split()[0] for line in lines] == ["1/3", "2/3", "3/3"], log
    assert all(line.startswith("fdg K=2") and "train_loss" in line and "test_acc" in line for line in lines), log


def _run_on_a_terminal(argv):
    """Run argv with stderr on a pseudo-terminal (so the tqdm bar is drawn); returns (code, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a width
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every writer (the resource tracker last) has closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = p.wait(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_dist_run_ends_without_a_leaked_semaphore_warning():
    code, err = _run_on_a_terminal([sys.executable, "-m", "torchdecoupled", "train", *TINY, "--epochs", "1",
                                    "--engine", "dist"])
    assert code == 0, err
    assert "tick/s" in err, err          # the bar was drawn: tqdm made its lock in the stage process
    assert "leaked" not in err, err


def _run_dir(root, name, summary, records):
    os.makedirs(root / name)
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (root / name / "summary.json").write_text(json.dumps(summary))
    return str(root / name)


def test_plot_a_compare_directory(tmp_path):
    cmp = tmp_path / "cmp"
    base = {"method": "fdg", "stages": 2}
    recs = [record(e) for e in range(3)]
    dist = [record(e, idle_fraction=[0.5, 0.25]) for e in range(3)]
    _run_dir(cmp, "sim", {**base, "engine": "sim", "replicas": 1}, recs)
    _run_dir(cmp, "dist", {**base, "engine": "dist", "replicas": 1}, dist)
    _run_dir(cmp, "dist2", {**base, "engine": "dist", "replicas": 2}, dist)
    _run_dir(cmp, "bp", {"method": "bp", "stages": 2, "engine": "sim", "replicas": 1}, recs)
    os.makedirs(cmp / "notes")  # not a run: skipped
    dirs = find_runs([str(cmp)])
    assert [os.path.basename(d) for d in dirs] == ["bp", "dist", "dist2", "sim"]
    summaries = [load_run(d)[0] for d in dirs]
    assert run_labels(dirs, summaries) == ["bp K=2 sim D=1", "fdg K=2 dist D=1", "fdg K=2 dist D=2",
                                           "fdg K=2 sim D=1"]
    titles = [p[0] for p in panels([load_run(d)[1] for d in dirs])]
    assert any("test loss" in t for t in titles) and any("idle fraction" in t for t in titles)
    fig = runs_figure([str(cmp)])
    fig.canvas.draw()
    for ax in [a for a in fig.axes if a.get_visible()]:  # whole epochs on every x axis
        low, high = ax.get_xlim()
        assert all(float(t).is_integer() for t in ax.get_xticks() if low <= t <= high), ax.get_xticks()
    png = tmp_path / "p.png"
    assert plot_runs([str(cmp)], str(png)) == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in or under"):
        plot_runs([str(cmp / "notes")], str(png))


def test_plot_labels_alike_runs_by_directory_and_skips_missing_panels(tmp_path):
    a = _run_dir(tmp_path, "lr0.1", {"method": "fdg", "stages": 2, "engine": "sim", "replicas": 1}, [record(0)])
    b = _run_dir(tmp_path, "lr0.2", {"method": "fdg", "stages": 2, "engine": "sim", "replicas": 1}, [record(0)])
    c = _run_dir(tmp_path, "partial", None, [record(0)])
    assert run_labels([a, b, c], [{"method": "fdg", "stages": 2}] * 2 + [{}]) == [
        "fdg K=2 (lr0.1)", "fdg K=2 (lr0.2)", "partial"]
    titles = [p[0] for p in panels([[record(0)]])]
    assert not any("idle" in t for t in titles)  # the simulator measures no idle time
    plot_runs([a, b, c], str(tmp_path / "p.png"))


def test_timeline_legend_clears_the_axis_label_and_colours_differ():
    events = [("F", "F0", 0, 0, 2_000_000), ("wait", "wait", 0, 2_000_000, 3_000_000),
              ("B", "B0", 1, 3_000_000, 6_000_000), ("U", "U0", 1, 6_000_000, 7_000_000),
              ("send", "send", 1, 7_000_000, 7_500_000), ("eval", "eval 0", 2, 8_000_000, 9_000_000)]
    fig = gantt_figure([{"stage": k, "replica": 0, "rank": k, "idle": 0.5, "events": events} for k in range(2)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    label = fig.axes[0].xaxis.label.get_window_extent(renderer)
    assert not legend.overlaps(label), (legend, label)
    assert legend.y1 <= label.y0 and legend.y0 >= 0  # below the label, inside the picture
    rgb = {k: [int(c[i:i + 2], 16) for i in (1, 3, 5)] for k, c in COLORS.items()}
    for a, b in itertools.combinations(rgb, 2):  # the old palette's closest pairs: 48 to 60 apart
        assert math.dist(rgb[a], rgb[b]) > 70, (a, b)


@pytest.mark.parametrize("engine", ["sim", "dist"])
def test_train_with_tensorboard_writes_every_epoch_on_either_engine(tmp_path, engine):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from torchdecoupled.cli import main
    out = tmp_path / engine
    assert main(["train", *TINY, "--epochs", "2", "--engine", engine, "--out", str(out), "--tensorboard",
                 "--no-progress"]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("acc/test")] == [1, 2]
    want = [json.loads(line)["test_acc"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("acc/test")] == pytest.approx(want)
    if engine == "dist":
        assert "idle_fraction/stage_1" in events.Tags()["scalars"]

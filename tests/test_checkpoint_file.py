"""The checkpoint file (``checkpoint_file.py``): nothing in it runs, damage is caught before anything is restored,
a failed write leaves the previous checkpoint and no temporary file."""
import errno
import os

import pytest
import torch

from torchdecoupled import checkpoint, checkpoint_file
from torchdecoupled.cli import main

RUN = ["train", "--method", "fdg", "--stages", "2", "--dataset", "mnist1d", "--model", "mlp", "--batch-size", "500",
       "--epochs", "1", "--no-progress"]


class Creates:
    """Unpickled with weights_only=False, creates the file ``path`` (as a crafted checkpoint.pt could run anything)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def small_state(tick=3):
    weight = torch.arange(64, dtype=torch.float32) * 0.37 + 11.0  # its bytes occur once in the file
    stages = [{"module": {"weight": weight, "flag": torch.tensor([True, False])}, "num_updates": 5,
               "losses": [(0, 2.3, 7, 500, 500)]}]
    messages = {("act", 4, 1): torch.ones(2, 3, dtype=torch.bfloat16)}
    return checkpoint.make(tick, [{"epoch": 0, "test_acc": 0.25}], {"method": "fdg", "milestones": (1, 2)},
                           [{"stages": stages, "messages": messages}])


def one_error_line(capsys) -> str:
    """The error the CLI printed (after the config line it prints first), which must be one line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("torchdecoupled: error: ") and all(x.startswith("config") for x in lines[:-1]), lines
    return lines[-1]


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
    made = tmp_path / "made-by-the-checkpoint"
    (tmp_path / "evil").mkdir()
    torch.save({"format": 2, "config": {}, "tick": Creates(str(made))}, tmp_path / "evil" / checkpoint.FILE)
    assert main([*RUN, "--resume", str(tmp_path / "evil")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"torchdecoupled: error: checkpoint '{tmp_path / 'evil' / checkpoint.FILE}' holds more "
                           f"than tensors, numbers and strings (Unsupported global: GLOBAL io.open ")
    assert "refused, nothing in it was run" in line
    assert not made.exists()


def test_a_flipped_bit_in_a_weight_is_refused_before_anything_starts(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*RUN, "--out", str(a), "--checkpoint"]) == 0
    path = a / checkpoint.FILE
    weight = next(iter(checkpoint.read(str(path))["replicas"][0]["stages"][0]["module"].values()))
    data = bytearray(path.read_bytes())
    at = data.find(weight.numpy().tobytes())
    assert at > 0 and data.count(weight.numpy().tobytes()) == 1
    data[at + weight.numel() * 2] ^= 1  # one bit of a float in the middle of the weight
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main([*RUN, "--out", str(b), "--resume", str(a)]) == 2
    assert one_error_line(capsys) == (f"torchdecoupled: error: checkpoint '{path}' fails its SHA-256 check (its "
                                      f"content changed after it was written): it is damaged (truncated or "
                                      f"overwritten) or not a checkpoint: resume from another run directory, or "
                                      f"start afresh without --resume")
    assert not (b / "summary.json").exists()


def _truncated(p):
    checkpoint.write(p, small_state())
    data = open(p, "rb").read()
    open(p, "wb").write(data[:len(data) // 2])


def _garbage(p):
    open(p, "wb").write(bytes(range(256)) * 20)


@pytest.mark.parametrize("spoil, says", [
    (_truncated, r"cannot be read \(\w+\): it is damaged"),
    (lambda p: open(p, "wb").close(), r"is empty: it is damaged"),
    (_garbage, r"cannot be read \(\w+\): it is damaged"),
    (lambda p: torch.save(torch.zeros(3), p), r"is not a torchdecoupled checkpoint \(it holds Tensor\)"),
    (lambda p: torch.save({"weight": torch.zeros(3)}, p),  # a model.pt
     r"is not a torchdecoupled checkpoint \(it holds a dict with keys \['weight'\]\)"),
    (lambda p: torch.save({**small_state(), "format": 9}, p), r"has format 9; this version reads formats 1 to 3"),
    (lambda p: torch.save(small_state(), p), r"fails its SHA-256 check"),  # format 3 without its checksum
    (lambda p: torch.save({**checkpoint_file.seal(small_state()), "tick": 4}, p), r"fails its SHA-256 check"),
    (lambda p: torch.save({**checkpoint_file.seal(small_state()), "format": 2}, p), r"fails its SHA-256 check"),
], ids=["truncated", "empty", "garbage", "tensor", "model.pt", "unknown-format", "no-checksum", "altered-number",
        "altered-format"])
def test_a_file_that_is_not_a_sound_checkpoint_is_refused_in_one_line(tmp_path, spoil, says):
    path = str(tmp_path / checkpoint.FILE)
    spoil(path)
    with pytest.raises(ValueError, match=r"\A(checkpoint )?'" + path + "' " + says) as e:
        checkpoint.read(path)
    assert "\n" not in str(e.value)


def test_a_checkpoint_reads_back_what_was_written(tmp_path):
    path = str(tmp_path / checkpoint.FILE)
    checkpoint.write(path, small_state())
    state = checkpoint.read(path)
    assert checkpoint_file.KEY not in state and state.keys() == small_state().keys()
    assert checkpoint_file.digest(state) == checkpoint_file.digest(small_state())
    assert state["replicas"][0]["messages"][("act", 4, 1)].dtype == torch.bfloat16


def test_a_checkpoint_of_format_2_is_read_with_a_warning(tmp_path):
    path = str(tmp_path / checkpoint.FILE)
    torch.save({**small_state(), "format": 2}, path)
    with pytest.warns(UserWarning, match=r"has format 2, written before checkpoints had a checksum: it is read "
                                         r"without one"):
        assert checkpoint.read(path)["tick"] == 3


def test_a_state_that_could_not_be_read_back_is_not_written(tmp_path):
    state = small_state()
    state["replicas"][0]["stages"][0]["num_updates"] = {5}
    with pytest.raises(TypeError, match=r"^state\['replicas'\]\[0\]\['stages'\]\[0\]\['num_updates'\] is a set "
                                        r"\(\{5\}\); a checkpoint holds tensors, dicts, lists, tuples, numbers, "
                                        r"strings and None only: store it as one of those$"):
        checkpoint.write(str(tmp_path / checkpoint.FILE), state)
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_writing_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / checkpoint.FILE)
    checkpoint.write(path, small_state(tick=3))

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.write(path, small_state(tick=7))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [checkpoint.FILE]
    assert checkpoint.read(path)["tick"] == 3


def test_ctrl_c_while_a_checkpoint_is_written_takes_effect_once_the_file_is_whole(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside torch.save used to leave torch's zip writer half-closed: its RuntimeError
    ('unexpected pos ...') replaced the interrupt (a traceback, exit 1). Now the interrupt waits for the file."""
    import os
    import signal

    import torch

    from torchdecoupled import checkpoint_file

    real = torch.save

    def interrupted_save(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the write
        real(obj, f)

    monkeypatch.setattr(checkpoint_file.torch, "save", interrupted_save)
    path = str(tmp_path / "checkpoint.pt")
    state = {"w": torch.arange(100000.0)}
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, even under nohup
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpoint_file.save(path, state)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(checkpoint_file.torch, "save", real)
    assert torch.equal(checkpoint_file.load(path)["w"], state["w"])
    assert not os.path.exists(path + ".tmp")

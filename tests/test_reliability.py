"""Reliability: what a hostile or careless user did to featurize and the commands after it, as
tests. Kills are real signals to real processes: the main process alone (as an OOM killer or a
scheduler does) or its whole process group.

The killed runs call `featurize()` in a small driver process rather than the CLI, which would
spend most of each run importing torch for the training commands; the CLI adds only option
parsing, which the in-process tests below cover.
"""

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from PIL import Image

from diffclass_cli.choices import Device
from diffclass_cli.data.sources import open_source
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.extract import featurize
from tests.conftest import assert_one_line_error, assert_same_feature_file, write_feature_file

DRIVER = """
import sys
from pathlib import Path
from diffclass_cli.console import configure
from diffclass_cli.data.sources import open_source
from diffclass_cli.features.extract import featurize
configure(quiet=True)
folder, out, model, resume = sys.argv[1:5]
featurize(open_source(folder), Path(out), Path(model), batch_size=16, workers=1, threads=1, resume=resume == "1")
"""
KILL_POINTS = 20


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """600 real digits as PNGs in class folders, and one corrupt file."""
    root = tmp_path_factory.mktemp("digits") / "images"
    source = open_source("mnist-sample:test")
    for i in range(600):
        folder = root / source.class_names[source.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        source.load(i).save(folder / f"{i:04d}.png")
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    return root


@pytest.fixture(scope="module")
def reference(digit_folder, tiny_onnx, tmp_path_factory):
    """The file of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "ref.h5"
    featurize(open_source(str(digit_folder)), out, tiny_onnx, batch_size=16, workers=1, threads=1)
    return out


def _start(folder: Path, out: Path, model: Path) -> subprocess.Popen:
    """A featurize run in its own process group (so the group can be killed as a job)."""
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(folder), str(out), str(model), "0"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_until(done, proc: subprocess.Popen, never: str, timeout: float = 60) -> None:
    """Poll `done()` while `proc` runs; fail with `never` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, never
        time.sleep(0.002)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    _wait_until(path.exists, proc, f"{path} never appeared", timeout)


def _wait_locked(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until `proc` holds its lock on `path`: the file appears a moment before it is locked."""
    _wait_for(path, proc, timeout)
    inode = path.stat().st_ino
    _wait_until(lambda: _holds_flock(proc.pid, inode), proc, f"{path} was never locked", timeout)


def _holds_flock(pid: int, inode: int) -> bool:
    """Whether /proc/locks lists a granted flock of process `pid` on the file with `inode`."""
    for fields in (line.split() for line in Path("/proc/locks").read_text().splitlines()):
        # "1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF"; waiting requests read "1: -> FLOCK ..."
        if fields[1] == "FLOCK" and fields[4] == str(pid) and fields[5].endswith(f":{inode}"):
            return True
    return False


def _processes_writing(out: Path) -> list[int]:
    """Processes (the driver and its forked decoding workers) whose command line names `out`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(out).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_gone(out: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _processes_writing(out):
        assert time.monotonic() < deadline, f"processes still running for {out}: {_processes_writing(out)}"
        time.sleep(0.02)


def _resume(folder: Path, out: Path, model: Path) -> None:
    if not out.exists():  # the kill may land after the rename
        featurize(open_source(str(folder)), out, model, batch_size=16, workers=1, threads=1, resume=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_anywhere_then_resume_gives_the_same_file(digit_folder, reference, tiny_onnx, tmp_path):
    """Random kill points (the first two at once and right after the partial file appears, where
    a file may not be valid HDF5 yet), random signals, to the main process or the group."""
    began = time.monotonic()
    timing = _start(digit_folder, tmp_path / "timing.h5", tiny_onnx)
    _wait_for(tmp_path / "timing.h5.partial", timing)
    appeared = time.monotonic()
    assert timing.wait(120) == 0
    run_seconds = time.monotonic() - appeared
    rng = np.random.default_rng(16)
    outcomes = []
    for point in range(KILL_POINTS):
        delay = [0.0, 0.01][point] if point < 2 else run_seconds * rng.uniform() ** 1.5
        sig = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT][rng.integers(3)]
        whole_group = bool(rng.integers(2))
        out = tmp_path / f"kill{point}.h5"
        proc = _start(digit_folder, out, tiny_onnx)
        _wait_for(partial := out.with_name(out.name + ".partial"), proc)
        time.sleep(delay)
        (os.killpg if whole_group else os.kill)(proc.pid, sig)
        proc.wait(60)
        _wait_gone(out)
        what = f"kill point {point}: {sig.name} to {'group' if whole_group else 'main'} after {delay:.3f} s"
        assert out.exists() or partial.exists(), what
        outcomes.append(_state(out))
        _resume(digit_folder, out, tiny_onnx)
        assert_same_feature_file(out, reference)
        assert not partial.exists(), what
    print(f"{KILL_POINTS} kill points over a {run_seconds:.2f} s run ({time.monotonic() - began:.0f} s in all); "
          f"left behind: {', '.join(outcomes)}")


def _state(out: Path) -> str:
    """What a killed run left: a finished file, a partial with N rows, or one not yet valid."""
    if out.exists():
        return "finished"
    try:
        with h5py.File(out.with_name(out.name + ".partial"), "r", locking=False) as f:
            return f"{f.attrs['rows']} rows"
    except (OSError, KeyError):
        return "not yet valid"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_main_process_leaves_no_worker_holding_the_file(digit_folder, reference, tiny_onnx, tmp_path):
    out = tmp_path / "k.h5"
    proc = _start(digit_folder, out, tiny_onnx)
    _wait_for(out.with_name(out.name + ".partial"), proc)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)  # the main process only; its decoding worker is not signalled
    proc.wait(30)
    _wait_gone(out)
    _resume(digit_folder, out, tiny_onnx)
    assert_same_feature_file(out, reference)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_failed_resume_keeps_the_earlier_rows(digit_folder, reference, tiny_onnx, tmp_path, monkeypatch):
    out = tmp_path / "r.h5"
    partial = out.with_name(out.name + ".partial")
    proc = _start(digit_folder, out, tiny_onnx)
    _wait_for(partial, proc)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    _wait_gone(out)
    if out.exists():
        pytest.skip("the run finished before the kill")
    before = partial.read_bytes()
    with pytest.raises(DiffclassError, match="--device cuda"):  # no GPU here, or CUDA made unusable
        monkeypatch.setattr("diffclass_cli.features.runtime.cuda_driver_present", lambda: False)
        featurize(open_source(str(digit_folder)), out, tiny_onnx, device=Device.cuda, resume=True)
    assert partial.read_bytes() == before
    monkeypatch.undo()
    _resume(digit_folder, out, tiny_onnx)
    assert_same_feature_file(out, reference)


def test_a_second_run_on_the_same_output_is_refused_and_the_first_is_intact(cli, digit_folder, reference,
                                                                             tiny_onnx, tmp_path):
    out = tmp_path / "c.h5"
    partial = out.with_name(out.name + ".partial")
    first = _start(digit_folder, out, tiny_onnx)
    _wait_locked(partial, first)
    os.kill(first.pid, signal.SIGSTOP)  # hold the first run mid-way, whatever the machine's speed
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert_one_line_error(cli("featurize", digit_folder, out, "--model", tiny_onnx, *extra),
                                  "another run is writing")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(120) == 0, first.stderr.read().decode()
    assert_same_feature_file(out, reference)


def _forged(model: Path, folder: Path, **changes) -> Path:
    """A copy of `model` with metadata values replaced (raw text) or removed (None)."""
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        props.pop(key) if value is None else props.__setitem__(key, value)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    out = folder / f"forged-{'-'.join(changes)}.onnx"
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("changes, message", [
    ({"image_size": "100000"}, "the graph's input is ['N', 1, 28, 28] but its metadata says ['N', 1, 100000"),
    ({"feature_dim": "7"}, "the graph's output is"),
    ({"feature_dim": None}, "damaged metadata: no feature_dim"),
    ({"taps": "[not json"}, "damaged metadata: taps is not JSON"),
    ({"format_version": '"1"'}, "format_version is not an int"),
    ({"channels": "2"}, "its metadata says ['N', 2, 28, 28]"),
    ({"format": None}, "not a diffclass extractor"),
])
def test_forged_extractor_metadata_is_refused_in_one_line(cli, class_tree, tiny_onnx, tmp_path, changes, message):
    model = _forged(tiny_onnx, tmp_path, **changes)
    out = tmp_path / "f.h5"
    assert_one_line_error(cli("featurize", class_tree, out, "--model", model), message)
    assert not out.exists() and not out.with_name("f.h5.partial").exists()
    assert cli("info", model).exit_code == 1


def test_links_to_files_are_followed_and_others_reported_unopened(tmp_path):
    real = tmp_path / "elsewhere" / "cats"
    real.mkdir(parents=True)
    for i in range(2):
        Image.new("L", (8, 8), i).save(real / f"{i}.png")
    root = tmp_path / "images"
    (root / "dogs").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "dogs" / "d.png")
    (root / "cats").symlink_to(real)
    (root / "dogs" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "dogs" / "self.png").symlink_to(root / "dogs" / "self.png")
    (root / "dogs" / "up").symlink_to(root)
    (root / "dogs" / "linked.png").symlink_to(real / "0.png")
    os.mkfifo(root / "dogs" / "pipe.png")
    (root / "slash").symlink_to("/")
    source = open_source(str(root))
    assert source.ids == ["dogs/d.png", "dogs/linked.png"] and source.class_names == ["dogs"]
    assert dict(source.skipped) == {"cats": "a symbolic link to a folder (not followed)",
                                    "slash": "a symbolic link to a folder (not followed)",
                                    "dogs/gone.png": "a broken symbolic link",
                                    "dogs/pipe.png": "not a regular file (a pipe, device or socket)",
                                    "dogs/self.png": "a symbolic link loop",
                                    "dogs/up": "a symbolic link to a folder (not followed)"}


@pytest.mark.parametrize("args, message", [
    (["featurize", "digits", "o.h5", "--workers", "-1"], "--workers must be at least 0, not -1"),
    (["featurize", "digits", "o.h5", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["featurize", "digits", "o.h5", "--threads", "0"], "--threads must be at least 1"),
    (["fit", "f.h5", "--out", "h.skops", "--C", "0"], "--C must be above 0, not 0"),
    (["fit", "f.h5", "--out", "h.skops", "--alpha", "-1"], "--alpha must be at least 0"),
    (["fit", "f.h5", "--out", "h.skops", "--hidden", "0"], "--hidden must be at least 1"),
    (["fit", "f.h5", "--out", "h.skops", "--cv", "1"], "--cv must be at least 2"),
    (["train-backbone", "digits", "--out", "x.ckpt", "--steps", "0"], "--steps must be at least 1, not 0"),
    (["train-backbone", "digits", "--out", "x.ckpt", "--steps", "-3"], "--steps must be at least 1, not -3"),
    (["train-backbone", "digits", "--out", "x.ckpt", "--epochs", "0"], "--epochs must be above 0"),
    (["train-backbone", "digits", "--out", "x.ckpt", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train-backbone", "digits", "--out", "x.ckpt", "--lr", "-1"], "--lr must be above 0"),
    (["train-backbone", "digits", "--out", "x.ckpt", "--channel-mults", "0"], "channel multipliers are 1 to 16"),
    (["train-backbone", "digits", "--out", "x.ckpt", "--blocks-per-level", "0"], "--blocks-per-level must be at"),
    (["benchmark", "m.onnx", "--out", "b", "--draws", "0"], "--draws must be at least 1"),
])
def test_out_of_range_values_are_one_line(cli, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli(*args), message)


def test_export_refuses_a_pool_finer_than_the_images_and_needs_out(cli, tiny_checkpoint, tmp_path):
    result = cli("export", tiny_checkpoint, "--out", tmp_path / "e.onnx", "--pool", "100x100")
    assert_one_line_error(result, "--pool 100x100 is finer than the 28x28 images; use at most 28x28")
    assert not (tmp_path / "e.onnx").exists()
    assert cli("export", tiny_checkpoint).exit_code == 2  # a usage error, like any missing option
    result = cli("export", tiny_checkpoint, "--out", tmp_path / "e.onnx", "--timestep", "5", "--timesteps", "5,9")
    assert result.exit_code == 1 and "not both" in result.stderr


@pytest.fixture
def head_and_files(cli, digit_files, tmp_path):
    head = tmp_path / "h.skops"
    assert cli("fit", digit_files["train"], "--out", head, "--head", "logreg").exit_code == 0
    return head, digit_files["test"]


def _damaged(path: Path, folder: Path, how: str) -> Path:
    """A copy of feature file `path`, damaged as `how` says."""
    out = folder / f"{how}.h5"
    out.write_bytes(path.read_bytes())
    with h5py.File(out, "a") as f:
        if how.startswith("no-"):
            del f[how[3:]]
        elif how == "nan-rows":
            f["features"][3] = np.nan
            f["features"][5, 0] = np.inf
        elif how == "short-labels":
            f["labels"].resize(10, axis=0)
    return out


@pytest.mark.parametrize("how, message", [
    ("no-labels", "is damaged: it has no labels"),
    ("no-paths", "is damaged: it has no paths"),
    ("no-class_names", "is damaged: it has no class_names"),
    ("no-skipped", "is damaged: it has no skipped"),
    ("short-labels", "labels has 10 rows but features has"),
    ("nan-rows", "2 row(s) with NaN or infinite features (digits:"),
])
def test_damaged_feature_files_are_one_line(cli, head_and_files, tmp_path, how, message):
    head, features = head_and_files
    damaged = _damaged(features, tmp_path, how)
    for args in (["fit", damaged, "--out", tmp_path / "new.skops"], ["predict", damaged, "--head", head],
                 ["evaluate", damaged, "--head", head]):
        assert_one_line_error(cli(*args), message)
    assert not (tmp_path / "new.skops").exists()


def test_a_feature_file_without_rows(cli, head_and_files, tmp_path):
    head, _ = head_and_files
    empty = write_feature_file(tmp_path / "empty.h5", np.empty((0, 64)), [], [], [str(d) for d in range(10)])
    result = cli("predict", empty, "--head", head)
    assert result.exit_code == 0 and result.stdout == "path,label,confidence\n"
    for args in (["fit", empty, "--out", tmp_path / "n.skops"], ["evaluate", empty, "--head", head]):
        result = cli(*args)
        assert result.exit_code == 1 and "no labeled rows" in result.stderr


def test_predict_to_a_folder_or_below_a_file(cli, head_and_files, tmp_path):
    head, features = head_and_files
    (tmp_path / "dir").mkdir()
    result = cli("predict", features, "--head", head, "--out", tmp_path / "dir", "--overwrite")
    assert result.exit_code == 1 and "is a folder" in result.stderr
    assert not (tmp_path / "dir.partial").exists()
    (tmp_path / "file").write_text("x")
    result = cli("predict", features, "--head", head, "--out", tmp_path / "file" / "p.csv")
    assert result.exit_code == 1 and "is a file, not a folder" in result.stderr


def _predict_command(*args) -> list[str]:
    return [sys.executable, "-m", "diffclass_cli", "predict", *map(str, args)]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_and_leaves_no_partial(head_and_files, tmp_path):
    head, features = head_and_files
    with open("/dev/full", "w") as full:
        result = subprocess.run(_predict_command(features, "--head", head), stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"diffclass: error: {os.strerror(errno.ENOSPC)}"

    def small_files():  # a file-size limit: writes past 4 KiB fail as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "p.csv"
    result = subprocess.run(_predict_command(features, "--head", head, "--out", out), capture_output=True, text=True,
                            timeout=120, preexec_fn=small_files)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"diffclass: error: {os.strerror(errno.EFBIG)}")
    assert not out.exists() and not out.with_name("p.csv.partial").exists()


def _file_size_limit(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_stops_featurize_cleanly_and_resume_finishes_the_same_file(digit_folder, reference, tiny_onnx,
                                                                               tmp_path):
    out = tmp_path / "f.h5"
    command = [sys.executable, "-m", "diffclass_cli", "featurize", str(digit_folder), str(out), "--model",
               str(tiny_onnx), "--batch-size", "16", "--workers", "1", "--threads", "1"]
    stopped = subprocess.run(command, capture_output=True, text=True, timeout=120,
                             preexec_fn=_file_size_limit(4_500_000))
    assert stopped.returncode == 1, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("diffclass: error: no room to write")
    assert "Traceback" not in stopped.stderr and "--resume" in stopped.stderr
    partial = out.with_name("f.h5.partial")
    with h5py.File(partial, "r") as f:
        assert 0 < f.attrs["rows"] < 600  # some batches were committed before the limit
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_feature_file(out, reference)


def test_merge_on_a_full_disk_is_one_line_and_leaves_nothing(reference, tmp_path):
    out = tmp_path / "m.h5"
    merged = subprocess.run([sys.executable, "-m", "diffclass_cli", "merge", str(out), str(reference)],
                            capture_output=True, text=True, timeout=120, preexec_fn=_file_size_limit(300_000))
    assert merged.returncode == 1, merged.stderr
    assert merged.stderr.strip().splitlines()[-1].startswith("diffclass: error: no room to write")
    assert "Traceback" not in merged.stderr and not out.exists() and not out.with_name("m.h5.partial").exists()


def test_training_on_a_full_disk_is_one_line(tmp_path):
    trained = subprocess.run([sys.executable, "-m", "diffclass_cli", "train-backbone", "digits:train", "--out",
                              str(tmp_path / "bb.ckpt"), "--steps", "2", "--width", "8", "--channel-mults", "1,2"],
                             capture_output=True, text=True, timeout=120, preexec_fn=_file_size_limit(100_000))
    assert trained.returncode == 1, trained.stderr
    assert trained.stderr.strip().splitlines()[-1].startswith(f"diffclass: error: cannot write {tmp_path / 'bb.ckpt'}")
    assert "Traceback" not in trained.stderr and not (tmp_path / "bb.ckpt").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["--version"], ["--help"], ["fit", "--help"]])
def test_help_and_version_on_a_full_disk_are_one_line(args):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "diffclass_cli", *args], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"diffclass: error: {os.strerror(errno.ENOSPC)}"


def test_a_killed_decoding_worker_is_one_line_and_the_partial_file_stays(tmp_path):
    out = tmp_path / "f.h5"
    run = subprocess.Popen([sys.executable, "-m", "diffclass_cli", "featurize", "mnist-sample:train", str(out),
                            "--workers", "2", "--batch-size", "64"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{run.pid}/task/{run.pid}/children")
    _wait_until(lambda: out.with_name("f.h5.partial").exists() and children.read_text().split(), run,
                "featurize never started its decoding workers")
    os.kill(int(children.read_text().split()[0]), signal.SIGKILL)
    stderr = run.communicate(timeout=120)[1]
    assert run.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1] == ("diffclass: error: a decoding worker died (killed by the system: out "
                                               "of memory?); featurize keeps its partial file for --resume")
    assert "Traceback" not in stderr and out.with_name("f.h5.partial").exists()

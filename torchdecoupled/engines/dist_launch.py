"""Start the K x D processes of a distributed run on this machine, watch them, stop them all on a failure.

Start-up: a ``forkserver`` with torch and the engine preloaded (a child starts in milliseconds, not the
seconds a ``spawn`` spends importing torch); rendezvous through a TCPStore that the launcher itself
holds on a free port (no race for the port), or through ``job.init_method`` if given.

What a child runs reaches it as one payload of bytes over its own pipe, made with cloudpickle: the
job, its own stage's ``StageSpec`` (layers on the CPU, head, the user's factories) and, for rank 0
only, the data. cloudpickle sends by value what the child could not import: classes, functions and
lambdas defined in the user's script, in ``python -`` or in a notebook; the caller's ``__main__`` is
never re-run in a child. So every process receives its own stage once and holds nothing else.

Watching: the launcher waits on every child's sentinel and result pipe. The first child that dies
(any exit code but 0, or a signal) or reports an error of its own makes the launcher kill all the
others at once (SIGKILL, which also ends a stopped process) and raise ``DistributedError`` naming the
stage, the rank and the tick (each child writes its current tick into a shared array). A child whose
error is caused by a peer (the peer died, or was silent past the timeout) is a consequence, not the
cause: the launcher then names a stopped process if there is one (from /proc), or waits up to
``GRACE_S`` for the cause to show itself. Children watch the launcher in turn: when their pipe to it
closes (the launcher died), they exit. Ctrl-C reaches the launcher, which stops the children; so does
SIGTERM (``DistributedError``: the CLI prints one line and exits 1). Set-up is bounded: a rank that has
not reached its first tick ``job.timeout`` seconds after its payload was sent (a rendezvous that never
completes, a peer that never answers) fails the run, naming the rank.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import types
from datetime import timedelta
from urllib.parse import urlparse

from .dist_job import DistJob
from .dist_layout import Layout
from .dist_worker import Fault, StageFailure, run_rank

GRACE_S = 1.0


class DistributedError(RuntimeError):
    """A distributed run failed; the message names the stage, the rank and the tick."""


def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch._dynamo", "torchdecoupled.engines.dist_launch"])
        return ctx
    return mp.get_context("spawn")


def launch(job: DistJob, payloads, devices: list[str], backend: str, fault: Fault | None = None, on_epoch=None):
    """Run all ranks as child processes, rank r with ``payloads[r]``; returns rank 0's result. Rank 0's
    epoch records reach ``on_epoch`` here, in the caller's process, as they are made."""
    import torch.distributed as dist

    world = job.world_size
    ctx = _context()
    progress = ctx.Array("q", [-1] * world, lock=False)  # each rank's current tick (-1: setting up)
    store, procs, conns, previous = None, [], [], _raise_on_sigterm()
    try:
        if job.init_method:
            rendezvous = ("url", job.init_method)
        else:
            store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                  timeout=timedelta(seconds=job.timeout))
            rendezvous = ("store", ("127.0.0.1", store.port))
        for rank in range(world):
            layout = Layout(job.stages, job.replicas, rank)
            here, there = ctx.Pipe()
            # not a daemon: a rank may start DataLoader workers of its own (it exits with us all the same)
            p = ctx.Process(target=child_main, name=f"torchdecoupled-{layout.name().replace(' ', '')}",
                            args=(layout, devices[rank], backend, rendezvous, progress, there, fault), daemon=False)
            with _bare_main():
                p.start()
            there.close()
            procs.append(p)
            conns.append(here)
        for rank, (conn, payload) in enumerate(zip(conns, payloads)):
            try:
                conn.send_bytes(payload)
            except OSError:
                pass  # that child is gone already: _watch says why
        setup = (job.timeout, f"--init-method {job.init_method}" if job.init_method else "the launcher's TCPStore")
        return _watch(procs, conns, progress, Layout(job.stages, job.replicas, 0), on_epoch, setup)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()  # SIGKILL ends a stopped process too
        for p in procs:
            p.join(5)
        for c in conns:
            c.close()
        del store
        if job.init_method and job.init_method.startswith("file://"):  # check_init_method: it was not there
            with contextlib.suppress(OSError):
                os.remove(urlparse(job.init_method).path)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm():
    """Make SIGTERM stop the run as Ctrl-C does (``launch``'s finally kills every child; the forkserver and
    the resource tracker end with this process); returns the handler to restore (None off the main thread,
    where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise DistributedError("distributed run stopped by SIGTERM: every stage process was killed")
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)
    return signal.SIG_DFL if previous is None else previous


@contextlib.contextmanager
def _bare_main():
    """Children need nothing from the caller's ``__main__``: hide it while a child starts, or
    multiprocessing would re-run it there (a script without a main guard, or this CLI itself)."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def child_main(layout: Layout, device, backend, rendezvous, progress, conn, fault):
    """One child process: run the rank, report to the launcher, exit (os._exit: no teardown hangs)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle: it kills us
    # This process inherited the forkserver start method. Under fork instead: a DataLoader's workers are our
    # children, gone when we are; and a semaphore made here (tqdm's lock, a DataLoader's queues) is unlinked
    # at once. Under forkserver or spawn it would be registered for unlinking at exit, which os._exit skips:
    # the resource tracker's "leaked semaphore objects" warning at the end of every run.
    if "fork" in mp.get_all_start_methods():
        mp.set_start_method("fork", force=True)
    code = 1
    try:
        try:
            job, spec, data, val = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            os._exit(1)  # the launcher is gone
        threading.Thread(target=_exit_with_launcher, args=(conn,), daemon=True).start()
        on_record = (lambda rec: _send(conn, ("epoch", rec))) if layout.rank == 0 else None
        result = run_rank(job, layout, spec, device, backend, rendezvous, progress, fault, data, val, on_record)
        _send(conn, ("done", result if layout.rank == 0 else None))
        code = 0
    except StageFailure as e:
        if e.peer:
            print(f"torchdecoupled: {e}", file=sys.stderr)
        elif not e.config_error:  # a configuration error: the launcher raises it in one line
            traceback.print_exc()
        _try_send(conn, ("error", str(e), e.peer, e.config_error))
    except BaseException as e:  # noqa: BLE001 - whatever it is, the launcher must hear of it
        traceback.print_exc()
        _try_send(conn, ("error", f"{layout.name()} failed: {type(e).__name__}: {e}", False, None))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _send(conn, msg) -> None:
    """Plain pickle: multiprocessing's would pass tensors as shared memory of a process about to exit."""
    conn.send_bytes(pickle.dumps(msg))


def _try_send(conn, msg) -> None:
    try:
        _send(conn, msg)
    except OSError:
        pass


def _exit_with_launcher(conn) -> None:
    """The launcher never writes to the pipe: end of file means it is gone, so this process goes too."""
    try:
        conn.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _watch(procs, conns, progress, layout: Layout, on_epoch=None, setup=None):
    """Wait for every child; on the first failure raise DistributedError (the caller kills the rest).
    ``setup``: (seconds, what the ranks rendezvous through): every rank must reach its first tick by then."""
    waiting = {p.sentinel: r for r, p in enumerate(procs)}
    waiting.update({c: r for r, c in enumerate(conns)})
    reports: dict[int, tuple] = {}
    codes: dict[int, int] = {}
    first, setup_end = None, None if setup is None else time.monotonic() + setup[0]
    while waiting:
        if first is None and setup_end is not None:
            _check_setup(procs, progress, layout, setup, setup_end)
            setup_end = setup_end if any(progress[r] < 0 and p.is_alive() for r, p in enumerate(procs)) else None
        end = first + GRACE_S if first is not None else setup_end
        timeout = None if end is None else max(0.0, end - time.monotonic())
        for obj in mp.connection.wait(list(waiting), timeout):
            if obj not in waiting:  # a pipe already read when its process ended
                continue
            r = waiting.pop(obj)
            if obj is procs[r].sentinel:
                procs[r].join()
                codes[r] = procs[r].exitcode
                if conns[r] not in waiting or not conns[r].poll(0):
                    continue
                obj = conns[r]  # read its last words before judging its exit
                waiting.pop(obj)
            try:
                msg = pickle.loads(obj.recv_bytes())
            except (EOFError, OSError):
                continue
            if msg[0] == "epoch":  # rank 0's record of an epoch: more will follow
                waiting[obj] = r
                if on_epoch is not None:
                    on_epoch(msg[1])
                continue
            reports[r] = msg
        failed = sorted({r for r, c in codes.items() if c != 0} | {r for r, m in reports.items() if m[0] == "error"})
        if not failed:
            continue
        first = time.monotonic() if first is None else first
        causes = [r for r in failed if not (reports.get(r, ("",))[0] == "error" and reports[r][2])]
        if causes:
            bad_config = reports.get(causes[0], ("", "", False, None))[3]
            if bad_config:
                raise ValueError(bad_config)  # found while setting up: the same on every rank
            raise DistributedError(f"distributed run failed: {_explain(causes[0], reports, codes, progress, layout)}")
        stopped = [r for r, p in enumerate(procs) if p.is_alive() and _state(p.pid) == "T"]
        if stopped or time.monotonic() >= first + GRACE_S:  # only consequences: name the silent one if known
            msg = _explain(failed[0], reports, codes, progress, layout)
            if stopped:
                msg = (f"{layout.name(stopped[0])} stopped at tick {progress[stopped[0]]} (its process is stopped: "
                       f"SIGSTOP?); {msg}")
            raise DistributedError(f"distributed run failed: {msg}")
    if 0 not in reports:
        raise DistributedError("distributed run failed: rank 0 ended without reporting its result")
    return reports[0][1]


def _check_setup(procs, progress, layout: Layout, setup, end: float) -> None:
    """Past the set-up deadline with a rank still setting up: raise DistributedError naming it."""
    late = [r for r, p in enumerate(procs) if progress[r] < 0 and p.is_alive()]
    if late and time.monotonic() >= end:
        seconds, how = setup
        names = ", ".join(layout.name(r) for r in late)
        raise DistributedError(f"distributed run failed: {names} still setting up after {seconds:g} s (--timeout): "
                               f"the rendezvous through {how} did not complete, or a peer did not answer; check "
                               f"it, or raise --timeout if set-up needs longer")


def _explain(r: int, reports, codes, progress, layout: Layout) -> str:
    if r in reports and reports[r][0] == "error":
        return reports[r][1]
    code, tick = codes.get(r), progress[r]
    how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    where = "during setup" if tick < 0 else f"at tick {tick}"
    return f"{layout.name(r)} died {where} ({how})"


def _state(pid: int) -> str:
    """The process state letter from /proc (T = stopped); '' where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""

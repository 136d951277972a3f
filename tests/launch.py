"""Running hf-mim commands as subprocess groups that cannot hang a test (shared by the CLI tests)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest


def run_group(cmd, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run a command whose processes all carry a marker in their environment. Output goes to files, not pipes: a
    launcher's workers live in sessions of their own (torchrun starts them so) and, were one to outlive the launcher,
    it would hold a pipe open and block the test for good. On timeout every marked process prints its threads' stacks
    (hf_mim registers faulthandler on SIGUSR1), then all are killed, and the test fails with those stacks."""
    return run_groups_together([cmd], env, timeout)[0]


def run_groups_together(cmds, env=None, timeout=300) -> list[subprocess.CompletedProcess]:
    """`run_group` for several commands started at once (the launches of a multi-machine run), sharing one marker
    and one deadline."""
    marker = uuid.uuid4().hex
    with contextlib.ExitStack() as files:

        def log():
            return files.enter_context(tempfile.TemporaryFile("w+"))

        logs = [(log(), log()) for _ in cmds]
        procs = [
            subprocess.Popen(
                cmd, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {}), _RUN_MARKER: marker}
            )
            for cmd, (out, err) in zip(cmds, logs, strict=True)
        ]
        deadline, timed_out = time.monotonic() + timeout, False
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
        if timed_out:
            _kill_marked(marker)
            for proc in procs:
                proc.wait()
        results = []
        for cmd, proc, (out, err) in zip(cmds, procs, logs, strict=True):
            out.seek(0)
            err.seek(0)
            results.append(subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()))
    if timed_out:
        tails = "\n".join(r.stderr[-4000:] for r in results)
        pytest.fail(f"{cmds[0][:6]}... did not finish in {timeout}s; stderr tails:\n{tails}")
    return results


_RUN_MARKER = "HF_MIM_TEST_RUN"


def _kill_marked(marker: str) -> None:
    def marked():
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(_RUN_MARKER) == marker:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    for p in marked():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGUSR1)
    time.sleep(2)  # for the stacks to be written
    victims = marked()
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(victims, timeout=10)


def hf_mim_command(command: str, args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`python -m hf_mim COMMAND ARGS` in one process."""
    return run_group([sys.executable, "-m", "hf_mim", command, *args], env=env, timeout=timeout)


# `hf-mim pretrain` that dies abruptly (no cleanup, like a kill) right after writing the checkpoint of step STEP: a
# test-side patch of the trainer's checkpoint writer, so production code carries no test hook.
_KILLED_AFTER_CHECKPOINT = """
import os, sys
from hf_mim.training import trainer
write = trainer.save_checkpoint

def save_then_die(accelerator, output_dir, step, *args, **kwargs):
    write(accelerator, output_dir, step, *args, **kwargs)
    if step == {step}:
        os._exit(1)

trainer.save_checkpoint = save_then_die
from hf_mim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_after_checkpoint(step: int, args, timeout=300) -> subprocess.CompletedProcess:
    """`hf-mim pretrain ARGS`, killed right after its checkpoint of optimizer step `step` is written."""
    code = _KILLED_AFTER_CHECKPOINT.format(step=int(step))
    return run_group([sys.executable, "-c", code, "pretrain", *args], timeout=timeout)


def two_processes(command: str, args, timeout=300) -> subprocess.CompletedProcess:
    """`hf-mim COMMAND` on 2 CPU processes. `accelerate launch --multi_gpu` is accelerate's torchrun launcher;
    on a machine without GPUs hf_mim asks it for a gloo group (`--cpu` would start one process in accelerate 1.x)."""
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_mim", command]
    return run_group([sys.executable, *launch, *args], timeout=timeout)


def two_processes_killed_after_checkpoint(step: int, args, folder, timeout=300) -> subprocess.CompletedProcess:
    """`hf-mim pretrain ARGS` on 2 CPU processes, both killed right after the checkpoint of step `step` is written
    (the launcher then stops, as a cluster job would). `folder` holds the launched script."""
    script = Path(folder) / "killed_pretrain.py"
    script.write_text(_KILLED_AFTER_CHECKPOINT.format(step=int(step)))
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script), "pretrain"]
    return run_group([sys.executable, *launch, *args], timeout=timeout)


# `hf-mim pretrain` that reports, when it tears the process group down, how many DDP wrappers are still alive once
# accelerate has let go of its own: any is a reference the trainer kept, which would free the process group later,
# with the GIL held (pytorch#56297).
_COUNT_DDP_AT_TEARDOWN = """
import gc, sys
from torch.nn.parallel import DistributedDataParallel
from hf_mim.training import trainer
real = trainer.end_training

def counted(accelerator):
    accelerator.free_memory()
    gc.collect()
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    print(f"DDP wrappers alive at teardown: {alive}", flush=True)
    real(accelerator)

trainer.end_training = counted
from hf_mim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def two_processes_counting_ddp_at_teardown(args, folder, timeout=300) -> subprocess.CompletedProcess:
    """`hf-mim pretrain ARGS` on 2 CPU processes, each printing the DDP wrappers still alive at teardown."""
    script = Path(folder) / "count_ddp_pretrain.py"
    script.write_text(_COUNT_DDP_AT_TEARDOWN)
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script), "pretrain"]
    return run_group([sys.executable, *launch, *args], timeout=timeout)


def two_machines(command: str, args, timeout=300) -> list[subprocess.CompletedProcess]:
    """`hf-mim COMMAND` as a 2-machine run of one process each, both "machines" on this host: two accelerate
    launches, --machine_rank 0 and 1, meeting at 127.0.0.1 over gloo, as on a cluster (one launch per node)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2"]
    launch += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    cmds = [[sys.executable, *launch, "--machine_rank", str(rank), "-m", "hf_mim", command, *args] for rank in (0, 1)]
    return run_groups_together(cmds, timeout=timeout)


def in_process(command: str, args) -> subprocess.CompletedProcess:
    """`hf-mim COMMAND ARGS` in this process (no interpreter start-up): exit code, stdout and stderr."""
    from hf_mim.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([command, *args])
    return subprocess.CompletedProcess([command, *args], code, out.getvalue(), err.getvalue())

"""A dist_sync worker for the launcher tests: trains tiny_model and saves its parameters.

Usage: train_worker.py OUT_DIR.  Writes OUT_DIR/rank<R>.npz (the parameters, rank, num_workers).
With TINY_FAIL="RANK:STEP:HOW" in the environment, the worker of that kvstore rank fails after
that step: HOW is "exit3" (exits with code 3), "sigkill" (kills itself) or "raise" (raises an
exception inside distributed.exit_on_error).  With TINY_GRANDCHILD=PATH, every worker first starts
a long `sleep` child and writes its pid to PATH.<launch index>, to check process-group cleanup.
"""
import os
import signal
import subprocess
import sys

import numpy as onp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_model  # noqa: E402  (next to this script)

from bertpretrain import distributed  # noqa: E402


def failure(spec):
    """The after_step callback that fails as TINY_FAIL says, or None."""
    if not spec:
        return None
    fail_rank, fail_step, how = spec.split(":")

    def after_step(step, rank):
        if rank != int(fail_rank) or step != int(fail_step):
            return
        print(f"worker rank {rank}: failing on purpose ({how}) after step {step}", flush=True)
        if how == "exit3":
            os._exit(3)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("failing on purpose")

    return after_step


def main(out_dir):
    grandchild = os.environ.get("TINY_GRANDCHILD")
    if grandchild:
        sleeper = subprocess.Popen(["sleep", "600"])
        with open(f"{grandchild}.{os.environ['BERTPRETRAIN_LAUNCH_INDEX']}", "w") as file:
            file.write(str(sleeper.pid))
    kv = distributed.create_kvstore("dist_sync")
    with distributed.exit_on_error(kv):
        params = tiny_model.train(kv, failure(os.environ.get("TINY_FAIL")))
    onp.savez(os.path.join(out_dir, f"rank{kv.rank}.npz"), rank=kv.rank, num_workers=kv.num_workers,
              **params)
    print(f"worker rank {kv.rank} of {kv.num_workers}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

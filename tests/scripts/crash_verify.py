"""Inspect directories left by killed crash_child.py runs, in a fresh process.

    python crash_verify.py JSON

``JSON`` is ``{"directories": [...], "options": {...}, "next_save": true}``.
For each directory, a fresh CheckpointManager is made and the facts the
tests assert on are printed as one JSON line per directory: what is
committed, what the manager lists and names latest, whether every listed
checkpoint and the restore are bit-exact, and the orphaned objects after
``gc()`` and after the manager's own next save.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import crashlib

import cloudckpt
from cloudckpt.layout.statefile import read_state_file
from cloudckpt.storage import open_storage


def _name(url: str | None) -> str | None:
    return None if url is None else url.rstrip("/").rsplit("/", 1)[1]


def inspect(directory: str, options: dict | None, next_save: bool) -> dict:
    r: dict = {"directory": directory}
    s = open_storage(directory, options)
    _files, dirs = s.list_dir()
    r["committed"] = sorted(d for d in dirs if d.startswith("ckpt-") and s.exists(f"{d}/manifest.json"))
    r["partial"] = sorted(d for d in dirs if d.startswith("ckpt-") and d not in r["committed"])
    r["orphans_before"] = crashlib.orphans(directory, options)
    r["latest_function"] = _name(cloudckpt.latest_checkpoint(directory, storage_options=options))

    ckpt, live = crashlib.new_checkpoint()
    m = cloudckpt.CheckpointManager(ckpt, directory, 2, storage_options=options, options=crashlib.STORE_OPTIONS)
    r["listed"] = [_name(u) for u in m.checkpoints]
    r["latest"] = _name(m.latest_checkpoint)
    bad = []
    for name in sorted({*r["listed"], *([r["latest"]] if r["latest"] else [])}):
        number = int(name.split("-")[1])
        try:
            state = cloudckpt.load(f"{directory}/{name}", storage_options=options)
            if not crashlib.bit_exact(state, number) or int(state["step"]) != number:
                bad.append(f"{name}: not bit-exact")
        except Exception as exc:
            bad.append(f"{name}: {type(exc).__name__}: {exc}")
    r["listed_not_exact"] = bad
    restored = m.restore_or_initialize()
    r["restored"] = _name(restored)
    r["restored_exact"] = restored is not None and crashlib.bit_exact(live, int(ckpt.step)) and (
        int(ckpt.step) == int(_name(restored).split("-")[1])
    )
    st = read_state_file(s)
    r["state_file_latest"] = None if st is None else st.model_checkpoint_path
    r["gc_removed"] = [u[len(directory) + 1 :] for u in m.gc()]
    r["orphans_after_gc"] = crashlib.orphans(directory, options)
    if next_save:
        step = int(ckpt.step) + 1
        crashlib.fill(live, step)
        ckpt.step = step
        url = m.save()
        r["next_saved"] = _name(url)
        state = cloudckpt.load(url, storage_options=options)
        r["next_exact"] = crashlib.bit_exact(state, step)
        r["orphans_after_save"] = crashlib.orphans(directory, options)
        r["listed_after_save"] = [_name(u) for u in m.checkpoints]
    r["incomplete_uploads"] = [u.key for u in s.list_incomplete_uploads()]  # S3 multipart uploads of the killed save
    return r


def main(argv: list[str] | None = None) -> None:
    job = json.loads((sys.argv[1:] if argv is None else argv)[0])
    options = job.get("options") or None
    for d in job["directories"]:
        try:
            r = inspect(d, options, job.get("next_save", True))
        except Exception as exc:
            r = {"directory": d, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()

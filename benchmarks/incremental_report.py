"""Summaries, the markdown tables and the smoke checks of ``benchmarks/incremental.py``'s results."""

from __future__ import annotations

import statistics
from typing import Any


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def later(series: list[dict[str, Any]], key: str) -> list[float]:
    return [s[key] for r in series for s in r["saves"][1:]]


def sent_bytes(save: dict[str, Any]) -> int:
    """Bytes sent to the server by one save: the proxy's count where there is one, else the bytes written."""
    proxy = save.get("proxy")
    return int(proxy.get("up", 0)) if proxy is not None else int(save["bytes_written"])


def spread(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {"n": len(xs), "median": median(xs), "min": min(xs), "max": max(xs),
            "spread_pct": 100 * (max(xs) - min(xs)) / median(xs) if median(xs) else float("nan")}


def markdown(doc: dict[str, Any]) -> str:
    """The tables of the docs section, from a results document."""
    lines: list[str] = []
    w = lines.append
    mb = 1e6
    ft = doc.get("finetune", {})
    if ft:
        w("| target | mode | first save s | later save s (median, min-max) | sent per later save MB | "
          "copied per later save MB | speedup |")
        w("|---|---|---|---|---|---|---|")
        for tname, d in ft.items():
            s = d.get("summary")
            if not s:
                continue
            for mode in ("full", "incremental"):
                ls = s["later_save_s"][mode]
                w(f"| {tname} | {mode} | {s['first_save_s'][mode]:.2f} | {ls['median']:.3f} ({ls['min']:.3f}-"
                  f"{ls['max']:.3f}, n={ls['n']}) | {s['sent_per_later_save'][mode] / mb:.1f} | "
                  f"{s['copied_per_later_save'][mode] / mb:.1f} | {s['speedup'] if mode == 'incremental' else 1:.1f}x |")
        w("")
        loc = ft.get("local", {}).get("summary", {}).get("disk")
        if loc:
            w(f"Disk (local, {loc['checkpoints']} checkpoints per run): incremental run {loc['incremental_dir'] / mb:.1f} MB "
              f"on disk ({loc['apparent_incremental_dir'] / mb:.1f} MB apparent), full run {loc['full_dir'] / mb:.1f} MB, "
              f"one full checkpoint {loc['one_full_checkpoint'] / mb:.1f} MB.")
            w("")
    ld = doc.get("loads", {})
    if ld:
        w("| target | cache | incremental load s (median, min-max) | full load s | ratio |")
        w("|---|---|---|---|---|")
        for key, summ in ld.items():
            if not key.endswith("_summary"):
                continue
            for cache, v in summ.items():
                i, f = v["incremental"], v["full"]
                w(f"| {key[:-8]} | {cache} | {i['median']:.3f} ({i['min']:.3f}-{i['max']:.3f}, n={i['n']}) | "
                  f"{f['median']:.3f} ({f['min']:.3f}-{f['max']:.3f}, n={f['n']}) | {v['ratio']:.2f} |")
        w("")
    llm = doc.get("llm", {}).get("summary")
    if llm:
        g = llm["hash_gbps"]
        fa, ff = llm["full_save_s_all"], llm["full_first_save_s"]
        w("| crc32c GB/s | XXH3-128 GB/s | checksums_many GB/s | full save GB/s (local) | checksums_many % of save | "
          "added by XXH3 % of save (of a first save) |")
        w("|---|---|---|---|---|---|")
        w(f"| {g['crc32c']:.1f} | {g['xxh3']:.1f} | {g['checksums_many']:.1f} | {llm['save_gbps_full']:.2f} (median "
          f"{fa['median']:.2f} s, {fa['min']:.2f}-{fa['max']:.2f}, n={fa['n']}) | {llm['checksums_many_pct_of_save']:.1f} | "
          f"{llm['xxh3_added_pct_of_save']:.1f} ({llm['xxh3_added_pct_of_first_save']:.1f}: median {ff['median']:.2f} s) |")
        w("")
        w("| where | save s with XXH3 (median, min-max) | save s, crc32c only | added |")
        w("|---|---|---|---|")
        for where, ab in llm.get("ablation", {}).items():
            a, b = ab["with_xxh3_s"], ab["crc32c_only_s"]
            w(f"| {where} | {a['median']:.3f} ({a['min']:.3f}-{a['max']:.3f}, n={a['n']}) | {b['median']:.3f} "
              f"({b['min']:.3f}-{b['max']:.3f}, n={b['n']}) | {ab['added_pct']:+.1f} % |")
        w("")
        w("| llm-like, local | full s (median, min-max) | incremental s, everything changed | ratio |")
        w("|---|---|---|---|")
        for lv in llm.get("level_by_save", []):
            f, i = lv["full"], lv["incremental"]
            w(f"| later save {lv['later_save']} | {f['median']:.3f} ({f['min']:.3f}-{f['max']:.3f}, n={f['n']}) | "
              f"{i['median']:.3f} ({i['min']:.3f}-{i['max']:.3f}, n={i['n']}) | {lv['ratio']:.3f} |")
        w("")
    for variant, cp in doc.get("cp", {}).items():
        w(f"cp, {variant} layout ({cp['source']} -> {cp['destination']}, scale {cp['scale']}): sent "
          f"{cp['sent'] / mb:.1f} MB in {cp['copy']['seconds']:.1f} s; limit {cp['limit'] / mb:.1f} MB = 1.2 x (first "
          f"checkpoint {cp['base_bytes'] / mb:.1f} MB + 10 x changed {cp['changed_bytes'] / mb:.2f} MB); the 10 "
          f"saves wrote {cp['source_bytes_written_by_10_saves'] / mb:.1f} MB; copied inside the destination "
          f"(deduplicated) {cp['copy']['report'].get('bytes_deduplicated', 0) / mb:.1f} MB.")
        w("")
    if doc.get("targets"):
        w("| target | measured | limit | met |")
        w("|---|---|---|---|")
        for t in doc["targets"]:
            w(f"| {t['name']}: {t['what']} | {t['value']:.4g} | {t['op']} {t['limit']:.4g} | "
              f"{'yes' if t['met'] else 'no'}{' (' + t['note'] + ')' if t['note'] else ''} |")
    return "\n".join(lines) + "\n"


def smoke_checks(doc: dict[str, Any]) -> None:
    """What ``--smoke`` asserts: every incremental later save sent fewer bytes than the full one of the same
    rank in the series (with ``split``, where the frozen tensors are objects of their own; the default layout
    packs every tensor of the tiny state with the adapters: there it must not send more), and copied the rest;
    every load (another process's, or memory://'s own) returned the saved state bit-exactly."""
    for name, d in doc.get("finetune", {}).items():
        inc, full = d["series"]["incremental"], d["series"]["full"]
        assert inc and full, name
        for r_inc, r_full in zip(inc, full, strict=True):
            for s_i, s_f in zip(r_inc["saves"][1:], r_full["saves"][1:], strict=True):
                if d["variant"] == "split":
                    assert sent_bytes(s_i) < sent_bytes(s_f) and s_i["bytes_copied"] > 0, (name, s_i, s_f)
                else:
                    assert sent_bytes(s_i) <= sent_bytes(s_f) * 1.01, (name, s_i, s_f)
                assert s_f["bytes_copied"] == 0, (name, s_f)
            if "verified" in r_inc:
                assert r_inc["verified"] is True and r_full["verified"] is True, name
    for name, loads in doc.get("loads", {}).items():
        if not name.endswith("_summary"):
            assert loads and all(r["verified"] is True for r in loads), name
    for variant, cp in doc.get("cp", {}).items():
        assert cp["copy"]["verified"] is True, variant

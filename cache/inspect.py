"""`cache info` and `cache verify`: what a store holds, and whether it is consistent.

Both read the store a block at a time, one dask task per block (local threads, or a
dask.distributed cluster with `--scheduler`), so they run in bounded memory on 10 M posts.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from cache import schema
from cache.labels import label_state_errors
from cache.store import Store, open_store
from runtime.compute import ordered_results
from runtime.progress import Progress


def _problem_counts(store: Store) -> Counter:
    if "problems/kind" not in store:
        return Counter()
    kinds = store["problems/kind"][:]
    return Counter(str(k) for k in kinds)


SHOW_UNREADABLE = 10     # unreadable posts named per modality by `cache info`


def _block_progress(url: str, modality: str, rows: slice) -> tuple[dict, list[int]]:
    """Row status counts of one block and its first unreadable rows (a task: opens the store itself)."""
    st = open_store(url)[f"features/{modality}_status"][rows]
    values, n = np.unique(st, return_counts=True)
    bad = rows.start + np.flatnonzero(st == schema.Status.UNREADABLE)[:SHOW_UNREADABLE]
    return dict(zip(values.tolist(), n.tolist())), bad.tolist()


def progress(store: Store, modality: str, scheduler=None) -> dict:
    """Done blocks, row statuses over the whole array (a task per block), the first unreadable posts."""
    done = store[f"features/{modality}_done"][:]
    counts = Counter()
    unreadable: list[int] = []
    tasks = ((store.location, modality, store.block_rows(b)) for b in range(store.n_blocks))
    for c, bad in ordered_results(_block_progress, tasks, scheduler):
        counts.update(c)
        if len(unreadable) < SHOW_UNREADABLE:
            unreadable += bad
    unreadable = unreadable[:SHOW_UNREADABLE]
    source = "image" if modality == "image" else "caption"
    named = []
    if unreadable:
        idx = np.array(unreadable)
        ids = store["posts/id"].get_orthogonal_selection((idx,))
        what = store[f"posts/{source}"].get_orthogonal_selection((idx,))
        named = [{"row": int(r), "post": str(i), source: str(w)[:80]} for r, i, w in zip(idx, ids, what)]
    enc = store[f"features/{modality}"].attrs.get("encoder")
    return {
        "blocks_done": int(done.sum()), "blocks": int(len(done)),
        "rows": {s.name.lower(): int(counts.get(int(s), 0)) for s in schema.Status},
        "encoder": enc, "unreadable_first": named,
    }


def info(store: Store, scheduler=None) -> dict:
    out = {
        "url": store.url,
        "schema_version": store.attrs["schema_version"],
        "dataset_root": store.attrs.get("dataset_root"),
        "complete": store.attrs.get("complete", False),
        "posts": store.n_posts,
        "influencers": store.n_influencers,
        "block": store.block,
        "blocks": store.n_blocks,
        "problems": dict(sorted(_problem_counts(store).items())),
        "features": {},
        "labels": {},
        "predictions": None,
    }
    for modality in schema.MODALITIES:
        if store.has_features(modality):
            out["features"][modality] = progress(store, modality, scheduler)
    if "predictions" in store.group:
        a = dict(store.group["predictions"].attrs)
        out["predictions"] = {k: a.get(k) for k in ("complete", "run", "modality", "influencers", "posts")}
    out["predictions_interrupted"] = schema.PREDICTIONS_PARTIAL in store.group
    dropped = store.group.attrs.get("predictions_dropped")
    out["predictions_dropped"] = dropped if isinstance(dropped, dict) and out["predictions"] is None else None
    update = store.group.attrs.get("update")
    out["update"] = update if isinstance(update, dict) and update.get("finished") else None
    for table, cats in (("influencers", store.influencer_categories), ("posts", store.post_categories)):
        if f"{table}/label" not in store:
            continue
        label = store[f"{table}/label"][:]
        split = store[f"{table}/split"][:]
        out["labels"][table] = {
            name: {cats[c]: int(((label == c) & (split == code)).sum()) for c in range(len(cats))}
            for name, code in schema.SPLITS.items() if code}
    recorded = store.group.attrs.get("labels") or {}
    out["label_sources"] = {t: (recorded.get(t) or {}).get("source", "hand") for t in out["labels"]
                            if isinstance(recorded.get(t), dict)}
    return out


def format_info(d: dict) -> str:
    lines = [f"store      {d['url']}  (schema {d['schema_version']}{'' if d['complete'] else ', INCOMPLETE index'})",
             f"dataset    {d['dataset_root']}",
             f"posts      {d['posts']:,} of {d['influencers']:,} influencers; {d['blocks']} blocks of {d['block']:,}"]
    for modality, p in d["features"].items():
        rows = p["rows"]
        pct = 100.0 * p["blocks_done"] / p["blocks"] if p["blocks"] else 100.0
        enc = p["encoder"] or {}
        lines.append(f"{modality:<10} {p['blocks_done']}/{p['blocks']} blocks done ({pct:.0f}%); rows ok {rows['ok']:,}, "
                     f"no input {rows['no_input']:,}, unreadable {rows['unreadable']:,}, pending {rows['pending']:,}"
                     + (f"; encoder {enc.get('model', '?')}" if enc else ""))
        for u in p.get("unreadable_first", []):
            lines.append(f"{'':<10}   unreadable: post {u['post']} (row {u['row']}) "
                         f"{u.get('image', u.get('caption', ''))!r}")
        if rows["unreadable"] > len(p.get("unreadable_first", [])):
            lines.append(f"{'':<10}   … {rows['unreadable'] - len(p['unreadable_first'])} more")
    if d.get("predictions"):
        p = d["predictions"]
        state = "complete" if p["complete"] else "INCOMPLETE (an interrupted `heads predict`: rerun it)"
        lines.append(f"predicted  {state}; {p['modality']} run {p['run']}")
    if d.get("predictions_dropped"):
        p = d["predictions_dropped"]
        lines.append(f"predicted  none: the predictions{' of run ' + str(p['run']) if p.get('run') else ''} were dropped "
                     f"by `extract index --update` (they no longer cover the store); rerun `heads predict`")
    if d.get("update"):
        u = d["update"]
        lines.append(f"updated    {u.get('new_posts', 0):,} new posts, {u.get('vanished_posts', 0):,} dropped; features "
                     f"kept: {', '.join(f'{m} {n:,}' for m, n in (u.get('kept') or {}).items()) or 'none'}")
    if d.get("predictions_interrupted"):
        lines.append(f"predicted  an interrupted `heads predict` left {schema.PREDICTIONS_PARTIAL}/ (the predictions "
                     f"above, if any, are the previous run's, whole); rerun it")
    if d["problems"]:
        lines.append("problems   " + ", ".join(f"{k} {v}" for k, v in d["problems"].items()))
    else:
        lines.append("problems   none")
    for table, splits in d["labels"].items():
        total = sum(sum(v.values()) for v in splits.values())
        parts = ", ".join(f"{s} {sum(v.values())}" for s, v in splits.items())
        source = (d.get("label_sources") or {}).get(table)
        lines.append(f"labels     {table}: {total} labelled ({parts})" + (f"; from {source}" if source else ""))
    return "\n".join(lines)


def _verify_block(url: str, b: int, j0: int, offsets: np.ndarray, done: list[str]) -> list[str]:
    """The checks of one block (a task: opens the store itself); one sentence per problem.

    `offsets` are those of influencers j0… whose posts cover the block; `done`, the
    modalities whose done flag is set for it (both read once, by the caller).
    """
    store = open_store(url)
    rows = store.block_rows(b)
    errors = []
    expect = j0 + np.searchsorted(offsets, np.arange(rows.start, rows.stop), side="right") - 1
    if not np.array_equal(store["posts/influencer"][rows], expect):
        errors.append(f"posts/influencer disagrees with influencers/offsets in block {b}")
    for modality in done:
        st = store[f"features/{modality}_status"][rows]
        if (st == schema.Status.PENDING).any() or (st > max(schema.Status)).any():
            errors.append(f"{modality} block {b} is flagged done but has rows with status pending or invalid")
        x = store[f"features/{modality}"][rows]
        nan_rows = np.isnan(x).any(axis=1)
        if nan_rows.any():
            errors.append(f"{modality} block {b} is flagged done but rows {rows.start + int(np.flatnonzero(nan_rows)[0])}"
                          f"… ({int(nan_rows.sum())} rows) hold NaN: it was half-written")
    return errors


def verify(store: Store, scheduler=None, quiet: bool = True) -> list[str]:
    """Every inconsistency found, as one sentence each; an empty list means the store is sound.

    The whole-table checks run here; the per-block ones (owners, statuses, NaN rows of done
    blocks) run as one task per block on dask (`scheduler`: see cache/compute.py).
    """
    if not store.attrs.get("complete"):
        # the tables are partial: nothing else can be checked
        if store.attrs.get("importing"):
            return [f"the import of {store.attrs['importing']} did not finish: delete the store and run `cache "
                    f"import` again"]
        return ["the index did not finish (`extract index` was stopped before the end): rerun `extract index`"]
    errors: list[str] = label_state_errors(store)
    n, m = store.n_posts, store.n_influencers
    for name in schema.POST_STR + schema.POST_INT + schema.POST_EXTRA + ["label", "split"]:
        if f"posts/{name}" in store and store[f"posts/{name}"].shape[0] != n:
            errors.append(f"posts/{name} has {store[f'posts/{name}'].shape[0]} rows, expected {n}")
    offsets = store.offsets()
    offsets_ok = not (len(offsets) != m + 1 or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any())
    if not offsets_ok:
        errors.append("influencers/offsets is not a non-decreasing 0..N partition of the posts")
    for table, k in (("posts", len(store.post_categories)), ("influencers", len(store.influencer_categories))):
        if f"{table}/label" in store:
            label, split = store[f"{table}/label"][:], store[f"{table}/split"][:]
            if ((label < -1) | (label >= k)).any():
                errors.append(f"{table}/label holds values outside -1..{k - 1}")
            if ((label == -1) != (split == 0)).any():
                errors.append(f"{table}: labelled rows without a split, or splits on unlabelled rows")
    done_flags = {}
    for modality in schema.MODALITIES:
        if not store.has_features(modality):
            errors.append(f"features/{modality} is missing")
            continue
        done = store[f"features/{modality}_done"][:]
        if (len(done) != store.n_blocks or store[f"features/{modality}"].shape[0] != n
                or store[f"features/{modality}_status"].shape[0] != n):
            errors.append(f"features/{modality}: arrays are not sized for {n} posts in {store.n_blocks} blocks")
            continue
        if done.any() and store[f"features/{modality}"].attrs.get("encoder") is None:
            errors.append(f"features/{modality} has done blocks but no encoder fingerprint")
        done_flags[modality] = done
    if offsets_ok:
        owner_reported = False

        def task(b):
            rows = store.block_rows(b)
            j0 = int(np.searchsorted(offsets, rows.start, side="right")) - 1
            j1 = int(np.searchsorted(offsets, rows.stop - 1, side="right"))
            return (store.location, b, j0, offsets[j0:j1 + 1], [m for m, d in done_flags.items() if d[b]])
        tasks = (task(b) for b in range(store.n_blocks))
        bar = Progress(store.n_blocks, "blocks", "verify", quiet=quiet)
        for block_errors in ordered_results(_verify_block, tasks, scheduler):
            bar.update(1, failures=len(block_errors))
            for e in block_errors:
                if e.startswith("posts/influencer"):
                    if owner_reported:
                        continue
                    owner_reported = True
                errors.append(e)
        bar.close()
    for name, k in (("influencer_label", len(store.influencer_categories)), ("post_label", len(store.post_categories))):
        if f"predictions/{name}" in store:
            arr = store[f"predictions/{name}"]
            bad = any(((p < -1) | (p >= k)).any() for p in (arr[a:a + schema.TABLE_CHUNK * 4]
                                                           for a in range(0, arr.shape[0], schema.TABLE_CHUNK * 4)))
            if bad:
                errors.append(f"predictions/{name} holds values outside -1..{k - 1}")
    if "predictions" in store.group and not store.group["predictions"].attrs.get("complete", False):
        errors.append("predictions/ is incomplete: a `heads predict` was interrupted; rerun it")
    return errors

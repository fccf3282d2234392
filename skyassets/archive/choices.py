"""The product choice each observation's files were listed by, against the one the watchlist makes now.

``mast_products`` records, per observation, the ``products`` of the watchlist entry it listed the
observation's products by (the lake's ``product_choices``). An entry's ``products`` edited later
takes effect for the observations already fetched only when they are listed again: the ones whose
recorded choice differs from the watchlist's now are those to run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from skyassets.archive.watchlist import Watchlist
from skyassets.lake.store import Lake


def choices_digest(watchlist: Watchlist) -> str:
    """A short digest of every product choice the watchlist makes (and of the entries it cannot
    read): the same digest, the same choices, and nothing to compare again."""
    choices = {"defaults": watchlist.defaults.text, "invalid": sorted(name for name, _ in watchlist.invalid),
               **{f"entry:{e.name}": e.products.text for e in watchlist.entries}}
    return hashlib.sha256(json.dumps(choices, sort_keys=True).encode()).hexdigest()[:16]


def products_rechosen(lake: Lake, watchlist: Watchlist, obs_ids: Sequence[str]) -> dict[str, str]:
    """Those of ``obs_ids`` whose products ``watchlist`` chooses otherwise than when they were last
    listed, with the entries that found them. An observation found by an entry the watchlist cannot
    read now is left as it is (the entry's choice is not known). One listed before choices were
    recorded gets the watchlist's choice now recorded for it, so that an upgrade fetches nothing
    again and a later edit is seen."""
    recorded = {obs_id: part.column("products").to_pylist()
                for obs_id, part in lake.read_partitions("product_choices", obs_ids, columns=["products"]).items()}
    recorded = {obs_id: rows[0] for obs_id, rows in recorded.items() if rows}
    unrecorded = set(lake.written("mast_products", [k for k in obs_ids if k not in recorded]))
    if not recorded and not unrecorded:
        return {}
    found = lake.read("mast_observations", columns=["obs_id", "watchlist_entry"], missing_ok=True)
    entries = {k: str(v or "") for k, v in zip(found["obs_id"], found["watchlist_entry"], strict=True)}
    unreadable = {name for name, _ in watchlist.invalid}
    known = [k for k in obs_ids if not unreadable & set(entries.get(k, "").split(","))]
    for obs_id in (k for k in known if k in unrecorded):
        chosen = watchlist.products_for(entries.get(obs_id)).text
        lake.write("product_choices", [{"obs_id": obs_id, "products": chosen}], partition=obs_id)
    return {obs_id: entries.get(obs_id) or "the watchlist's defaults"
            for obs_id in known if obs_id in recorded
            and recorded[obs_id] != watchlist.products_for(entries.get(obs_id)).text}

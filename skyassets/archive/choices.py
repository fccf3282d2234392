"""The product choice each observation's files were listed by, against the one the watchlist makes now.

``mast_products`` records, per observation, the ``products`` of the watchlist entry it listed the
observation's products by (the lake's ``product_choices``). An entry's ``products`` edited later
takes effect for the observations already fetched only when they are listed again: the ones whose
recorded choice differs from the watchlist's now are those to run again.
"""

from __future__ import annotations

from collections.abc import Sequence

from skyassets.archive.watchlist import Watchlist
from skyassets.lake.store import Lake


def products_rechosen(lake: Lake, watchlist: Watchlist, obs_ids: Sequence[str]) -> dict[str, str]:
    """Those of ``obs_ids`` whose products ``watchlist`` chooses otherwise than when they were last
    listed, with the entries that found them. One listed before choices were recorded is taken as
    chosen as now, so an upgrade fetches nothing again."""
    recorded = {obs_id: part.column("products").to_pylist()
                for obs_id, part in lake.read_partitions("product_choices", obs_ids, columns=["products"]).items()}
    recorded = {obs_id: rows[0] for obs_id, rows in recorded.items() if rows}
    if not recorded:
        return {}
    found = lake.read("mast_observations", columns=["obs_id", "watchlist_entry"], missing_ok=True)
    entries = dict(zip(found["obs_id"], found["watchlist_entry"], strict=True))
    return {obs_id: str(entries.get(obs_id) or "the watchlist's defaults")
            for obs_id, before in sorted(recorded.items())
            if before != watchlist.products_for(entries.get(obs_id)).text}

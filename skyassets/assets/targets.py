"""The targets asset: which observations belong together on the sky, for composites and mosaics."""

from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, asset

from ..catalog import connect
from ..lake import write_parquet
from ..resources import HomeResource
from ..targets import group_targets
from .catalog import image_metadata
from .metadata import frame_metadata


@asset(
    group_name="targets",
    deps=[image_metadata],
    # Regrouped whenever an observation is catalogued; a missing or failed one must not hold it back.
    automation_condition=AutomationCondition.eager().without(~AutomationCondition.any_deps_missing()),
    kinds={"parquet"},
    description="Each catalogued observation's target: footprints that overlap on the sky, under one name.",
)
def target_groups(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    con = connect(home.home.root)
    try:
        images = con.execute("SELECT obs_id, target_name, s_region FROM images").df()
    finally:
        con.close()
    grouped = group_targets(images)
    write_parquet(grouped, home.home.table("target_groups"))
    summary = grouped.groupby(["target", "target_name"], as_index=False).agg(observations=("obs_id", "count"))
    context.log.info(f"{len(grouped)} observations in {len(summary)} targets")
    return MaterializeResult(metadata={**frame_metadata(summary, rows=50), "observations": len(grouped)})

"""Schedules: the watchlist is re-queried every day."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from skyassets.defs.archive.jobs import watchlist_job

daily_watchlist_schedule = ScheduleDefinition(
    name="daily_watchlist",
    job=watchlist_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Re-materialise mast_observations daily, so new public data is found.",
)

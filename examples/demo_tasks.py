"""A callable job for the demo: edgeworker calls `tidy(ctx)` with a TaskContext."""


def tidy(ctx):
    ctx.logger.info("tidying for task %s (attempt %s, scheduled for %s)",
                    ctx.task_id, ctx.attempt, ctx.scheduled_for.isoformat())
    if ctx.recovered:
        ctx.logger.info("an earlier run of this task was interrupted: checking its work first")

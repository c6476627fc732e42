"""The one error the aggregation step raises on purpose: the command line turns it into exit code 1."""


class AggregationError(RuntimeError):
    """Nothing to aggregate (no FINISHED fine-tune runs, no store...); the message says why."""

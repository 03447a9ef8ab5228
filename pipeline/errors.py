"""The one exception type for bad input: its message names the problem and the fix."""


class PipelineError(Exception):
    """Raised before any work is done when an input (param, file, artifact) is unusable."""

"""User-facing errors: the CLIs print these as one line and exit with code 2."""


class DHSAError(Exception):
    """A mistake the user can fix (bad input, missing weights, invalid parameter).

    The message must name the problem and the fix in one line.
    """


class ConfigError(DHSAError):
    """An invalid recipe or DHSA parameter."""


class ModelNotFoundError(DHSAError):
    """Weights could not be found in any of the places searched."""

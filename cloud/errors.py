"""The error tree of `cloud/`: one base, one branch per edge.

Third-party errors (pydantic, psycopg, paho) are translated where they are caught, with
`raise ... from err`, so `__main__` can turn any `CloudError` into one clear sentence.
"""


class CloudError(Exception):
    """Base of every error the receiver raises on purpose."""


class ConfigError(CloudError):
    """A configuration file or environment that cannot be loaded or validated."""


class StoreError(CloudError):
    """The database cannot be reached, or its schema is not what this receiver expects."""


class RejectedDataError(StoreError):
    """The database refused the data of a group (not the connection): one message in it is poison."""

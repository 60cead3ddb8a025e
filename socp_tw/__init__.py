"""socp-tw: a Twisted implementation of the Secure Overlay Chat Protocol v1.3."""

__version__ = "0.1.0"

"""edgeworker: scheduled jobs for edge boxes, from one SQLite file, safe at a power cut."""

__version__ = "0.1.0"

"""The base of every error the user can fix; the command line prints these as one clear line."""


class TrainingError(Exception):
    """A problem with the input (data, options, model); the message says what to do."""
